"""pty-chi quality vs dose (issue 3's table): one JSON line per (dose, noise model).

Simulates image:camera+astronaut with the fly64 probe on a dense jittered raster (N=64), runs
LSQML from a flat object with the known probe, and scores it with ``compare`` (Flat floor too).

Usage: python benchmarks/ptychi_dose.py [--doses 1e3,1e4,1e5] [--noise-models gaussian,poisson]
       [--epochs 100] [--object-size 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import tempfile

from ptychobench.evaluate.compare import compare
from ptychobench.iterative import IterativeConfig, reconstruct
from ptychobench.simulate import SimulationConfig, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--doses", default="1e3,1e4,1e5")
    ap.add_argument("--noise-models", default="gaussian,poisson")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--object-size", type=int, default=256)
    ap.add_argument("--overlap", type=float, default=0.7)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    for dose in (float(d) for d in args.doses.split(",")):
        ds = simulate(SimulationConfig(
            N=64, object="image:camera+astronaut", object_size=args.object_size, probe="fly64",
            scan="raster", overlap=args.overlap, jitter_px=1.0, dose=dose, seed=0,
        ))
        for noise_model in args.noise_models.split(","):
            cfg = IterativeConfig(epochs=args.epochs, device=args.device, noise_model=noise_model,
                                  progress=False)
            rec = reconstruct(ds, cfg)
            with tempfile.TemporaryDirectory() as d:
                res = compare(ds, {"PtyChi": rec}, d)
            row = {"benchmark": "ptychi_dose", "dose": dose, "noise_model": noise_model,
                   "epochs": args.epochs, "n_patterns": ds.n,
                   "seconds": round(rec.metadata["seconds"], 2)}
            for arm, m in res.metrics.items():
                row[arm] = {
                    "phase_ssim": round(m["ssim"][1], 4), "amplitude_ssim": round(m["ssim"][0], 4),
                    "phase_mae": round(m["mae"][1], 4), "nrmse": round(m["nrmse"], 4),
                    "phase_frc50": round(m["frc50"][1], 4),
                    "amplitude_frc50": round(m["frc50"][0], 4),
                    "amplitude_psnr": round(m["psnr"][0], 2),
                }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
