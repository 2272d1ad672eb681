"""Training throughput (patterns/s) of PtychoPINN and the Baseline; one JSON line per case.

Usage: python benchmarks/train.py [--sizes 64,128] [--scales 0.25,0.5,1] [--epochs 2]
       [--n-positions 512] [--device cpu|cuda]
Compare numbers only as ratios within one run (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile

import torch

from ptychobench.fit import fit
from ptychobench.models import count_parameters, flops_per_pattern
from ptychobench.models.blocks import ModelConfig
from ptychobench.simulate import SimulationConfig, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--scales", default="0.25,0.5,1")
    ap.add_argument("--kinds", default="pinn,baseline")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-positions", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    for N in (int(s) for s in args.sizes.split(",")):
        ds = simulate(SimulationConfig(N=N, object="grf", object_size=4 * N, scan="random",
                                       n_positions=args.n_positions, dose=1e4, seed=0))
        for kind in args.kinds.split(","):
            for s in (float(x) for x in args.scales.split(",")):
                with tempfile.TemporaryDirectory() as d:
                    res = fit(ds, kind, d, train_config={
                        "epochs": args.epochs, "batch_size": args.batch_size,
                        "device": args.device, "val_fraction": 0.0,
                    }, n_filters_scale=s, progress=False)
                cfg = ModelConfig(kind=kind, N=N, n_filters_scale=s)
                best = max(h["patterns_per_s"] for h in res.history)
                print(json.dumps({
                    "benchmark": "train", "kind": kind, "N": N, "n_filters_scale": s,
                    "device": args.device, "batch_size": args.batch_size,
                    "n_patterns": ds.n, "patterns_per_s": round(best, 1),
                    "gflop_per_pattern": round(flops_per_pattern(cfg) / 1e9, 4),
                    "parameters": count_parameters_for(cfg, ds),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "machine": platform.machine(),
                }), flush=True)


def count_parameters_for(cfg, ds) -> int:
    from ptychobench.models import build_model

    probe = torch.from_numpy(ds.probeGuess)
    return count_parameters(build_model(cfg.model_dump(mode="json"), probe))


if __name__ == "__main__":
    main()
