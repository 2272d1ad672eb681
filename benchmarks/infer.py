"""Inference throughput and memory; PINN inference vs a pty-chi reconstruction of the same data.

Prints JSON lines:
* ``infer``: patterns/s of streaming inference (PINN gs1/gs2, Baseline) at N=64 and 128;
* ``infer_memory``: peak RSS growth of streaming inference at n = 1e3, 1e4, 1e5 patterns (each in
  a fresh subprocess; the dataset is synthetic, so the numbers isolate the inference path);
* ``infer_vs_ptychi``: wall-clock ratio of a 100-epoch pty-chi LSQML reconstruction to PINN
  inference on the same patterns, same machine, one run.

* ``infer_cpu_opt`` (``--compare-eager``): PINN gs1 patterns/s of the plain eager path vs the
  optimised one on CPU, their ratio and the largest output difference, in one run;
  ``infer_cpu_compile`` (``--with-compile``): the same against ``torch.compile``.

Usage: python benchmarks/infer.py [--what speed,memory,ratio] [--scale 0.5] [--device cpu]
       python benchmarks/infer.py --compare-eager [--with-compile] [--n-patterns 2048]
       [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch


def _model(kind, N, gridsize, scale, probe):
    from ptychobench.models import build_model

    cfg = {"kind": kind, "N": N, "gridsize": gridsize, "n_filters_scale": scale,
           "canvas_pad": 16}
    torch.manual_seed(0)
    return build_model(cfg, torch.from_numpy(probe))


def _synthetic(n, N, seed=0):
    """A dataset of n random patterns on a 1024² frame (no simulation cost)."""
    from ptychobench.data.dataset import PtychoDataset
    from ptychobench.physics.probes import make_probe

    rng = np.random.default_rng(seed)
    return PtychoDataset(
        diffraction=rng.random((n, N, N), dtype=np.float32),
        probeGuess=make_probe("fly64", N),
        xcoords=rng.uniform(N, 1024 - N, n), ycoords=rng.uniform(N, 1024 - N, n),
        metadata={},
    )


def speed(args):
    from ptychobench.infer import infer

    for N in (64, 128):
        ds = _synthetic(2048, N)
        for kind, g in (("pinn", 1), ("pinn", 2), ("baseline", 1)):
            m = _model(kind, N, g, args.scale, ds.probeGuess)
            infer(m, ds.select(np.arange(64)), device=args.device)  # warm-up
            rec = infer(m, ds, device=args.device, batch_size=256)
            print(json.dumps({
                "benchmark": "infer", "kind": kind, "gridsize": g, "N": N,
                "n_filters_scale": args.scale, "device": args.device, "n_patterns": ds.n,
                "seconds": round(rec.metadata["seconds"], 3),
                "patterns_per_s": round(ds.n / rec.metadata["seconds"], 1),
                "threads": torch.get_num_threads(), "torch": torch.__version__,
                "machine": platform.machine(),
            }), flush=True)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def memory_child(n, scale):
    from ptychobench.infer import infer

    ds = _synthetic(n, 64)
    m = _model("pinn", 64, 1, scale, ds.probeGuess)
    # ru_maxrss survives exec on Linux (it reported the parent's peak); reset the high-water
    # mark of this process instead and read VmHWM
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _status_kib("VmRSS")
    infer(m, ds, device="cpu", batch_size=256)
    peak = _status_kib("VmHWM")
    print(json.dumps({
        "benchmark": "infer_memory", "n_patterns": n, "N": 64,
        "dataset_mib": round(ds.diffraction.nbytes / 2**20, 1),
        "rss_before_mib": round(before / 1024, 1),
        "peak_rss_growth_mib": round((peak - before) / 1024, 1),
    }), flush=True)


def memory(args):
    for n in (1_000, 10_000, 100_000):
        subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--scale",
                        str(args.scale)], check=True)


def ratio(args):
    from ptychobench.data.split import split
    from ptychobench.fit import fit
    from ptychobench.infer import infer
    from ptychobench.iterative import IterativeConfig, reconstruct
    from ptychobench.models.bundle import load_bundle
    from ptychobench.simulate import SimulationConfig, simulate

    ds = simulate(SimulationConfig(N=64, object="image:camera+astronaut", object_size=256,
                                   overlap=0.7, dose=1e4, seed=0))
    train, test = split(ds)
    with tempfile.TemporaryDirectory() as d:
        fit(train, "pinn", d, train_config={"epochs": 1, "val_fraction": 0.0},
            n_filters_scale=args.scale, progress=False)
        m, cfg = load_bundle(d)
        infer(m, test.select(np.arange(32)), device=args.device)  # warm-up
        t0 = time.perf_counter()
        infer(m, test, device=args.device)
        t_pinn = time.perf_counter() - t0
    t0 = time.perf_counter()
    reconstruct(test, IterativeConfig(epochs=100, device=args.device, progress=False))
    t_ptychi = time.perf_counter() - t0
    print(json.dumps({
        "benchmark": "infer_vs_ptychi", "n_patterns": test.n, "n_filters_scale": args.scale,
        "device": args.device, "pinn_seconds": round(t_pinn, 3),
        "ptychi_100_epochs_seconds": round(t_ptychi, 2), "ratio": round(t_ptychi / t_pinn, 1),
    }), flush=True)


def compare_eager(args):
    """One line: PINN gs1 inference patterns/s, plain eager path vs the optimised one (same
    model, same data, interleaved best-of-``--repeats``), and their largest output difference."""
    from ptychobench.infer import infer

    ds = _synthetic(args.n_patterns, 64)
    m = _model("pinn", 64, 1, args.scale, ds.probeGuess)
    infer(m, ds.select(np.arange(64)), device="cpu", fast=False)  # warm-up, both layouts
    infer(m, ds.select(np.arange(64)), device="cpu", fast=True)
    best = {False: float("inf"), True: float("inf")}
    recs = {}
    for _ in range(args.repeats):
        for fast in (False, True):
            recs[fast] = infer(m, ds, device="cpu", batch_size=256, fast=fast)
            best[fast] = min(best[fast], recs[fast].metadata["seconds"])
    diff = np.abs(recs[True].reconstructed_object - recs[False].reconstructed_object).max()
    print(json.dumps({
        "bench": "infer_cpu_opt", "kind": "pinn", "gridsize": 1, "N": 64,
        "n_filters_scale": args.scale, "n_patterns": ds.n, "repeats": args.repeats,
        "patterns_per_s_eager": round(ds.n / best[False], 1),
        "patterns_per_s_opt": round(ds.n / best[True], 1),
        "speedup_vs_eager": round(best[False] / best[True], 3),
        "max_abs_diff": float(diff),
        "optimisations": "channels-last convolutions (oneDNN) under no_grad",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }), flush=True)
    if args.with_compile:
        compare_compile(args, ds, m, best, recs[False])


def compare_compile(args, ds, m, best, eager_rec):
    """One line: torch.compile (inductor) against the eager and channels-last paths above, with
    its one-off compilation time — whether compiling pays on this machine."""
    from ptychobench.infer import infer

    t0 = time.perf_counter()
    first = infer(m, ds, device="cpu", batch_size=256, fast=False, compile=True)
    first_s = time.perf_counter() - t0
    steady = min(infer(m, ds, device="cpu", batch_size=256, fast=False, compile=True)
                 .metadata["seconds"] for _ in range(args.repeats))
    diff = np.abs(first.reconstructed_object - eager_rec.reconstructed_object).max()
    print(json.dumps({
        "bench": "infer_cpu_compile", "kind": "pinn", "gridsize": 1, "N": 64,
        "n_filters_scale": args.scale, "n_patterns": ds.n, "compiled": first.metadata["compiled"],
        "patterns_per_s_eager": round(ds.n / best[False], 1),
        "patterns_per_s_channels_last": round(ds.n / best[True], 1),
        "patterns_per_s_compiled": round(ds.n / steady, 1),
        "speedup_compiled_vs_eager": round(best[False] / steady, 3),
        "first_pass_s_compiled": round(first_s, 2), "max_abs_diff": float(diff),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--what", default="speed,memory,ratio")
    ap.add_argument(
        "--compare-eager", action="store_true",
        help="only the CPU line: plain eager vs optimised inference (bench infer_cpu_opt)",
    )
    ap.add_argument(
        "--with-compile", action="store_true",
        help="with --compare-eager: also torch.compile (bench infer_cpu_compile)",
    )
    ap.add_argument("--n-patterns", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--memory-child", type=int, default=None)
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.scale)
        return
    if args.compare_eager:
        compare_eager(args)
        return
    for what in args.what.split(","):
        {"speed": speed, "memory": memory, "ratio": ratio}[what](args)


if __name__ == "__main__":
    main()
