"""CDTools reconstructs our CXI, loaded unmodified; scored by ``compare`` beside pty-chi.

    python benchmarks/interchange_cdtools.py [--out-dir DIR] [--dose 1e4] [--epochs 100]

1. ``simulate`` camera+moon, 192², raster at 70 % linear overlap, N = 64, the default geometry
   (8.8 keV, 2 m, 75 µm), then ``convert`` to CXI — the file a CDTools user gets.
2. CDTools 0.3.x: ``Ptycho2DDataset.from_cxi`` on that file as is; ``FancyPtycho.from_dataset``
   with its default amplitude-MSE loss (CDTools' documented default: the Gaussian
   approximation of Poisson noise on the amplitude, stable from a flat start); the probe set to
   the file's own illumination (``entry_1/image_1/data``, already on the photon scale) and frozen;
   positions, background and weights frozen; the object starts flat (CDTools' default: ones).
   Schedule: CDTools' own ``Adam_optimize`` defaults (lr 0.005, batch 15) for ¾ of ``--epochs``,
   then lr 0.001 for the last ¼ to settle the noise, as CDTools' examples end on a lower rate
   (Adam on the object only). Measured once, not tuned: the example's opening lr 0.02 (batch 10)
   diverged on this photon scale (phase SSIM 0.04 after 100 epochs). Fair as PtyChi is fair: the
   known probe, the known positions, a flat start, no ground truth.
3. pty-chi LSQML (``ptychobench reconstruct``, 100 epochs, the study's settings) on the NPZ.
4. ``ptychobench compare`` scores both the same way (registration, phase plane, FRC).

Prints one JSON line per arm (phase / amplitude SSIM, NRMSE, phase FRC50, seconds) and one with
the CDTools − PtyChi differences. The CDTools object is put into our pixel frame by the convention
the CXI test suite proves (:func:`ptychobench.peers.cdtools_to_our_frame`: our index = CDTools
index + min_translation − (N−1)/2, to the nearest whole pixel; the sub-pixel rest is registered
by ``compare``, as for every arm). The study's ``CDTools`` arm (``ptychobench.peers``) reads the
same file but sets the probe from the data alone, as the PtyChi arm does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _cli(*args: str) -> None:
    exe = Path(sys.executable).with_name("ptychobench")
    subprocess.run([str(exe), *args], check=True, stdout=subprocess.DEVNULL)


def cdtools_reconstruct(cxi: Path, epochs: int, seed: int = 0) -> tuple[np.ndarray, float, dict]:
    """CDTools FancyPtycho on the CXI file as written; (object in CDTools' frame, seconds, info)."""
    import h5py
    import torch
    from cdtools.datasets import Ptycho2DDataset
    from cdtools.models import FancyPtycho

    torch.manual_seed(seed)
    dataset = Ptycho2DDataset.from_cxi(str(cxi))
    with h5py.File(cxi, "r") as f:
        probe = np.asarray(f["entry_1/instrument_1/source_1/illumination"][()])
    model = FancyPtycho.from_dataset(dataset)
    with torch.no_grad():
        # FancyPtycho's intensity is |far_field(probe_norm · probe · O)|² (orthonormal FFT)
        model.probe.data[...] = 0
        model.probe.data[0] = torch.as_tensor(probe, dtype=model.probe.dtype) / model.probe_norm
    for name, p in model.named_parameters():
        p.requires_grad_(name == "obj")
    quarter = epochs // 4
    stages = [(epochs - quarter, 0.005), (quarter, 0.001)]
    t0 = time.perf_counter()
    losses = []
    for n, lr in stages:
        for loss in model.Adam_optimize(n, dataset, lr=lr, batch_size=15, thread=False):
            losses.append(float(loss))
    seconds = time.perf_counter() - t0
    obj = model.obj.detach().cpu().numpy()
    if obj.ndim == 3:
        obj = obj[0]
    min_t = model.min_translation.detach().cpu().numpy().astype(np.float64)
    info = {"final_loss": losses[-1], "epochs": len(losses), "min_translation_px": min_t.tolist()}
    return obj.astype(np.complex64), seconds, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument("--dose", type=float, default=1e4)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--object", default="image:camera+moon", help="any simulate --object")
    args = ap.parse_args()
    out = args.out_dir or Path(tempfile.mkdtemp(prefix="interchange_cdtools_"))
    out.mkdir(parents=True, exist_ok=True)
    d, cxi = out / "d.npz", out / "d.cxi"

    from ptychobench.data.io import load
    from ptychobench.data.recon import Reconstruction, write_reconstruction
    from ptychobench.iterative import illumination_coverage
    from ptychobench.peers import cdtools_to_our_frame

    _cli(
        "simulate", "--out", str(d), "--object", args.object, "--object-size", "192",
        "--scan", "raster", "--overlap", "0.7", "--dose", f"{args.dose:g}",
    )  # fmt: skip
    _cli("convert", str(d), str(cxi))
    ds = load(d)

    obj_cd, cd_s, info = cdtools_reconstruct(cxi, args.epochs)
    image, residual = cdtools_to_our_frame(
        obj_cd, np.asarray(info["min_translation_px"]), ds.N, ds.frame_shape
    )
    info["frame_residual_px"] = residual
    rec = Reconstruction(
        image,
        illumination_coverage(ds, ds.frame_shape),
        {"arm": "CDTools", "seconds": cd_s, "infer_s": 0.0, "refine_s": cd_s, **info},
    )
    write_reconstruction(rec, out / "cdtools.npz")

    t0 = time.perf_counter()
    _cli("reconstruct", str(d), "--out", str(out / "ptychi.npz"), "--epochs", "100")
    pc_s = time.perf_counter() - t0
    _cli(
        "compare", str(d), "--out-dir", str(out / "cmp"), "--iterative", str(out / "ptychi.npz"),
        "--arm", f"CDTools={out / 'cdtools.npz'}",
    )  # fmt: skip
    metrics = json.loads((out / "cmp" / "metrics.json").read_text())["models"]
    with np.load(out / "ptychi.npz", allow_pickle=False) as f:
        ptychi_seconds = json.loads(str(f["metadata"]))["seconds"]
    rows = {}
    for arm, seconds in (("CDTools", cd_s), ("PtyChi", ptychi_seconds), ("Flat", None)):
        m = metrics[arm]
        rows[arm] = {
            "bench": "interchange_cdtools",
            "arm": arm,
            "object": args.object,
            "dose": args.dose,
            "n_patterns": ds.n,
            "phase_ssim": m["ssim"]["phase"],
            "amplitude_ssim": m["ssim"]["amplitude"],
            "nrmse": m["nrmse"],
            "phase_frc50": m["frc50"]["phase"],
            "seconds": seconds,
        }
        print(json.dumps(rows[arm]))
    print(
        json.dumps(
            {
                "bench": "interchange_cdtools_delta",
                "phase_ssim_cdtools_minus_ptychi": rows["CDTools"]["phase_ssim"]
                - rows["PtyChi"]["phase_ssim"],
                "amplitude_ssim_cdtools_minus_ptychi": rows["CDTools"]["amplitude_ssim"]
                - rows["PtyChi"]["amplitude_ssim"],
                "within_0_03_phase_ssim": abs(
                    rows["CDTools"]["phase_ssim"] - rows["PtyChi"]["phase_ssim"]
                )
                <= 0.03,
                "ptychi_wall_s_incl_startup": pc_s,
                "out_dir": str(out),
            }
        )
    )


if __name__ == "__main__":
    main()
