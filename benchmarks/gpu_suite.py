"""GPU throughput suite: the network path, pty-chi LSQML and one dose of the fly64 study (one GPU).

One command, JSON lines on stdout, nothing asserted on time; meant to finish in about 8 minutes
on one CUDA GPU (``--budget-s``; the study part gets what is left)::

    python benchmarks/gpu_suite.py [--budget-s 480] [--what kernels,path,lsqml,study]

Rows (key ``bench``):

* ``gpu_env``: device name, torch and CUDA versions.
* ``kernel_infer`` / ``kernel_train``: patterns/s of ``model.predict`` (inference) and of
  forward + loss (Poisson through the far-field physics for the PINN, MAE for the Baseline) +
  backward + Adam step (training), on device-resident random patterns, for PINN gs1 / gs2
  (shared channel mode) and the Baseline, ``n_filters_scale`` 1 and 2, N = 64 and 128, fp32 and
  bf16 autocast, a sweep of batch sizes; with the peak GPU memory of each case.
* ``infer_path``: the whole streaming :func:`ptychobench.infer.infer` (host arrays, pinned
  chunks, stitching on the device) for the PINN gs1 at N = 64: eager fp32, bf16, compiled; and
  the largest output difference to the eager fp32 path.
* ``lsqml``: pty-chi LSQML seconds/epoch on the same patterns (the difference of a 13- and a
  3-epoch run, so set-up is not counted), and ``ratio_vs_lsqml100``: how many times faster the
  PINN's inference is than a 100-epoch LSQML reconstruction of those patterns (whole path and
  kernel).
* ``study_fly64``: ``ptychobench study run --preset fly64 --only dose=1000``: wall seconds,
  seconds and peak GPU MiB per stage (job kind), from the run's manifest.

Without CUDA every planned GPU row is printed with ``"status": "unmeasured"`` and the reason:
numbers are never estimated. ``--device cpu --smoke`` runs the same code at toy sizes on the CPU
(that is what the test suite does, to keep the script working where no GPU is).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

WHAT = ("kernels", "path", "lsqml", "study")
KINDS = (("pinn", 1), ("pinn", 2), ("baseline", 1))


def emit(row: dict[str, Any]) -> None:
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
          flush=True)


class Clock:
    """The suite's budget: each part asks how many seconds are left."""

    def __init__(self, budget_s: float) -> None:
        self.t0, self.budget = time.perf_counter(), float(budget_s)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_mib(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _autocast(dev: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _model(kind: str, gridsize: int, scale: float, N: int, dev: torch.device):
    from ptychobench.models import build_model
    from ptychobench.physics.probes import make_probe

    cfg = {"kind": kind, "N": N, "gridsize": gridsize, "n_filters_scale": scale,
           "canvas_pad": 8}
    if kind == "pinn" and gridsize > 1:
        cfg["channel_mode"] = "shared"
    torch.manual_seed(0)
    return build_model(cfg, torch.from_numpy(make_probe("fly64", N))).to(dev)


def _inputs(kind: str, C: int, N: int, batch: int, dev: torch.device) -> dict[str, torch.Tensor]:
    """Random amplitudes (~1e4 photons per pattern), offsets of a few px, truth for the Baseline."""
    g = torch.Generator(device="cpu").manual_seed(0)
    diffraction = torch.rand((batch, C, N, N), generator=g) * (2e4 / (N * N)) ** 0.5
    batch_ = {"diffraction": diffraction.to(dev),
              "offsets": (torch.rand((batch, C, 2), generator=g) * 6 - 3).to(dev)}
    if kind == "baseline":
        batch_["Y"] = torch.polar(torch.rand((batch, C, N, N), generator=g) + 0.5,
                                  torch.rand((batch, C, N, N), generator=g) - 0.5).to(dev)
    return batch_


def _rate(step, batch_patterns: int, dev: torch.device, min_s: float) -> float:
    """Patterns/s of ``step`` (two warm-up calls, then repeated for at least ``min_s``)."""
    for _ in range(2):
        step()
    _sync(dev)
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        if n % 4 == 0 or dev.type == "cpu":
            _sync(dev)
            if time.perf_counter() - t0 >= min_s:
                break
    _sync(dev)
    return n * batch_patterns / (time.perf_counter() - t0)


def kernels(args, dev: torch.device, clock: Clock) -> dict[str, float]:
    """``kernel_infer`` and ``kernel_train`` rows; returns the best rates of the headline case,
    PINN gs1 at the first size and scale (N = 64, s = 1; the issue's targets)."""
    best: dict[str, float] = {}
    for N in args.sizes:
        for kind, gs in KINDS:
            for scale in args.scales:
                for dtype in ("fp32", "bf16"):
                    for mode in ("infer", "train"):
                        for batch in args.batches[N]:
                            base = {"bench": f"kernel_{mode}", "kind": kind, "gridsize": gs,
                                    "n_filters_scale": scale, "N": N, "dtype": dtype,
                                    "batch_groups": batch, "patterns_per_group": gs * gs,
                                    "device": _device_name(dev)}
                            if clock.left() < args.reserve_s:
                                emit(base | {"status": "skipped", "reason": "budget"})
                                continue
                            try:
                                pps = _kernel(kind, gs, scale, N, dtype, mode, batch, dev, args)
                            except torch.OutOfMemoryError:
                                emit(base | {"status": "oom"})
                                continue
                            emit(base | {"status": "ok", "patterns_per_s": round(pps, 1),
                                         "peak_gpu_mib": _peak_mib(dev)})
                            if (kind, gs, N, scale) == ("pinn", 1, args.sizes[0],
                                                        args.scales[0]):
                                k = f"{mode}_{dtype}"
                                best[k] = max(best.get(k, 0.0), pps)
    return best


def _kernel(kind, gs, scale, N, dtype, mode, batch, dev, args) -> float:
    model = _model(kind, gs, scale, N, dev)
    data = _inputs(kind, gs * gs, N, batch, dev)
    _reset_peak(dev)
    if mode == "infer":
        model.eval()

        def step():
            with torch.no_grad(), _autocast(dev, dtype):
                model.predict(data["diffraction"], data["offsets"])
    else:
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            with _autocast(dev, dtype):
                loss = model.loss(data)
            loss.backward()
            opt.step()
    return _rate(step, batch * gs * gs, dev, args.min_s)


def _dataset(args):
    """The patterns the path and LSQML rows share: a simulated raster scan at dose 1e4."""
    from ptychobench.simulate import SimulationConfig, simulate

    cfg = SimulationConfig(N=args.path_N, object="image:camera+astronaut",
                           object_size=args.object_size, overlap=0.7, dose=1e4, seed=0)
    return simulate(cfg)


def path(args, dev: torch.device, ds) -> dict[str, float]:
    """``infer_path`` rows: the whole streaming inference, eager / bf16 / compiled."""
    from ptychobench.infer import infer

    model = _model("pinn", 1, args.path_scale, ds.N, dev)
    out: dict[str, float] = {}
    ref = None
    for name, kw in (("eager_fp32", {}), ("bf16", {"amp": True}), ("compiled_fp32",
                                                                     {"compile": True})):
        infer(model, ds, device=str(dev), batch_size=args.path_batch, **kw)  # warm-up / compile
        _reset_peak(dev)
        rec = infer(model, ds, device=str(dev), batch_size=args.path_batch, **kw)
        pps = ds.n / rec.metadata["seconds"]
        img = rec.reconstructed_object
        ref = img if ref is None else ref
        out[name] = pps
        emit({"bench": "infer_path", "variant": name, "kind": "pinn", "gridsize": 1,
              "n_filters_scale": args.path_scale, "N": ds.N, "n_patterns": ds.n,
              "batch_groups": args.path_batch, "device": _device_name(dev),
              "compiled": rec.metadata["compiled"], "patterns_per_s": round(pps, 1),
              "max_abs_diff_vs_eager_fp32": float(np.abs(img - ref).max()),
              "peak_gpu_mib": _peak_mib(dev)})
    return out


def lsqml(args, dev: torch.device, ds, rates: dict[str, float]) -> None:
    """``lsqml`` row: pty-chi LSQML s/epoch on the same patterns and the PINN/LSQML ratios."""
    from ptychobench.iterative import IterativeConfig, reconstruct

    seconds = {}
    # warm-up: pty-chi's imports and first kernels are not an epoch's cost
    reconstruct(ds, IterativeConfig(epochs=1, device=dev.type, progress=False))
    _reset_peak(dev)
    for epochs in (args.lsqml_epochs_short, args.lsqml_epochs_long):
        t0 = time.perf_counter()
        reconstruct(ds, IterativeConfig(epochs=epochs, device=dev.type, progress=False))
        _sync(dev)
        seconds[epochs] = time.perf_counter() - t0
    per_epoch = (seconds[args.lsqml_epochs_long] - seconds[args.lsqml_epochs_short]) / (
        args.lsqml_epochs_long - args.lsqml_epochs_short)
    lsqml100 = 100 * per_epoch
    row = {"bench": "lsqml", "n_patterns": ds.n, "N": ds.N, "device": _device_name(dev),
           "seconds_per_epoch": per_epoch,
           "pattern_updates_per_s": round(ds.n / per_epoch, 1) if per_epoch > 0 else None,
           "lsqml_100_epochs_s": lsqml100, "peak_gpu_mib": _peak_mib(dev)}
    for name, pps in rates.items():
        # PINN inference of the same patterns in ds.n / pps seconds
        row[f"ratio_vs_lsqml100_{name}"] = round(lsqml100 / (ds.n / pps), 1)
    emit(row)


def study(args, dev: torch.device, clock: Clock) -> None:
    """``study_fly64``: one dose of the fly64 preset, per-stage seconds and peak GPU memory."""
    limit = clock.left() - 5
    base = {"bench": "study_fly64", "only": args.study_only, "device": _device_name(dev)}
    if limit < 30:
        emit(base | {"status": "skipped", "reason": "budget", "seconds_left": round(limit, 1)})
        return
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "ptychobench.cli", "study", "run", "--preset",
               args.study_preset, "--only", args.study_only, "--out", d]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            status = "timeout"
        wall = time.perf_counter() - t0
        stages: dict[str, dict[str, Any]] = {}
        manifest = Path(d) / "manifest.json"
        if manifest.exists():
            for rec in json.loads(manifest.read_text())["jobs"].values():
                if rec.get("seconds") is None:
                    continue
                st = stages.setdefault(rec["kind"], {"jobs": 0, "seconds": 0.0,
                                                     "peak_gpu_mib": None})
                st["jobs"] += 1
                st["seconds"] = round(st["seconds"] + rec["seconds"], 2)
                gpu = rec.get("peak_gpu_mb")
                if gpu is not None:
                    st["peak_gpu_mib"] = max(st["peak_gpu_mib"] or 0.0, gpu)
    emit(base | {"status": status, "preset": args.study_preset, "wall_s": wall,
                 "stages": stages})


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def unmeasured(args, reason: str) -> None:
    """The planned GPU rows, each saying it was not measured and why."""
    for part in args.what:
        benches = {"kernels": ["kernel_infer", "kernel_train"], "path": ["infer_path"],
                   "lsqml": ["lsqml"], "study": ["study_fly64"]}[part]
        for b in benches:
            emit({"bench": b, "status": "unmeasured", "reason": reason})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--what", default=",".join(WHAT), help=f"comma list of {', '.join(WHAT)}")
    ap.add_argument("--budget-s", type=float, default=480.0)
    ap.add_argument("--smoke", action="store_true", help="toy sizes (checks the script itself)")
    ap.add_argument("--study-preset", default="fly64")
    ap.add_argument("--study-only", default="dose=1000")
    a = ap.parse_args(argv)
    a.what = [w for w in a.what.split(",") if w]
    bad = [w for w in a.what if w not in WHAT]
    if bad:
        ap.error(f"--what: expected some of {', '.join(WHAT)}, found {', '.join(bad)}")
    if a.smoke:
        a.sizes, a.scales, a.batches = (32,), (0.25,), {32: (4,)}
        a.min_s, a.reserve_s = 0.05, 0.0
        a.path_N, a.object_size, a.path_scale, a.path_batch = 32, 96, 0.25, 16
        a.lsqml_epochs_short, a.lsqml_epochs_long = 1, 2
    else:
        a.sizes, a.scales = (64, 128), (1.0, 2.0)
        a.batches = {64: (256, 1024, 4096), 128: (256, 1024)}
        a.min_s, a.reserve_s = 0.5, 150.0  # keep time for path, LSQML and the study
        a.path_N, a.object_size, a.path_scale, a.path_batch = 64, 512, 1.0, 1024
        a.lsqml_epochs_short, a.lsqml_epochs_long = 3, 13
    return a


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    clock = Clock(args.budget_s)
    if args.device == "cuda" and not torch.cuda.is_available():
        emit({"bench": "gpu_env", "status": "unmeasured", "torch": torch.__version__,
              "reason": "no CUDA device (torch.cuda.is_available() is False)"})
        unmeasured(args, "no CUDA device")
        return
    dev = torch.device(args.device)
    emit({"bench": "gpu_env", "status": "ok", "device": _device_name(dev),
          "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": args.smoke})
    rates: dict[str, float] = {}
    if "kernels" in args.what:
        rates |= {f"kernel_{k}": v for k, v in kernels(args, dev, clock).items()
                  if k.startswith("infer")}
    ds = _dataset(args) if {"path", "lsqml"} & set(args.what) else None
    if "path" in args.what:
        rates |= {f"path_{k}": v for k, v in path(args, dev, ds).items()}
    if "lsqml" in args.what:
        lsqml(args, dev, ds, rates)
    if "study" in args.what:
        study(args, dev, clock)


if __name__ == "__main__":
    main()
