"""pty-chi speed: seconds per epoch and pattern-updates/s at N=64; one JSON line per case.

Usage: python benchmarks/iterative.py [--n-positions 529] [--epochs 10] [--engines lsqml,epie,dm]
       [--devices cpu,cuda]   (cuda only when available)
Compare numbers only as ratios within one run (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from ptychobench.iterative import IterativeConfig, reconstruct
from ptychobench.simulate import SimulationConfig, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-positions", type=int, default=529)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--engines", default="lsqml")
    ap.add_argument("--noise-models", default="gaussian")
    default_devices = "cpu,cuda" if torch.cuda.is_available() else "cpu"
    ap.add_argument("--devices", default=default_devices)
    args = ap.parse_args()
    ds = simulate(SimulationConfig(N=64, object="grf", object_size=256, scan="random",
                                   n_positions=args.n_positions, dose=1e4, seed=0))
    for device in args.devices.split(","):
        for engine in args.engines.split(","):
            for noise_model in args.noise_models.split(","):
                cfg = IterativeConfig(engine=engine, epochs=args.epochs, device=device,
                                      noise_model=noise_model, progress=False)
                reconstruct(ds, cfg.model_copy(update={"epochs": 1}))  # warm-up
                rec = reconstruct(ds, cfg)
                sec = rec.metadata["seconds"]
                print(json.dumps({
                    "benchmark": "iterative", "engine": engine, "noise_model": noise_model,
                    "device": device, "N": 64, "n_patterns": ds.n, "epochs": args.epochs,
                    "batch_size": cfg.batch_size or (10 if engine == "epie" else 100),
                    "seconds": round(sec, 3), "seconds_per_epoch": round(sec / args.epochs, 4),
                    "pattern_updates_per_s": round(ds.n * args.epochs / sec, 1),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "machine": platform.machine(),
                }), flush=True)


if __name__ == "__main__":
    main()
