"""Simulation throughput (patterns/s) at N=64 and N=128; one JSON line per case.

Usage: python benchmarks/simulate.py [--n-positions 2000] [--device cpu|cuda] [--repeats 3]
Compare numbers only as ratios within one run (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from ptychobench.simulate import SimulationConfig, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-positions", type=int, default=2000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="64,128")
    args = ap.parse_args()
    for N in (int(s) for s in args.sizes.split(",")):
        cfg = SimulationConfig(
            N=N,
            object="grf",
            object_size=4 * N,
            probe="fly64",
            scan="random",
            n_positions=args.n_positions,
            dose=1e4,
            seed=0,
            device=args.device,
        )
        simulate(cfg.model_copy(update={"n_positions": 16}))  # warm-up (FFT plans, imports)
        best = float("inf")
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            ds = simulate(cfg)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        print(
            json.dumps(
                {
                    "benchmark": "simulate",
                    "N": N,
                    "n_patterns": ds.n,
                    "device": args.device,
                    "seconds": round(best, 4),
                    "patterns_per_s": round(ds.n / best, 1),
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "machine": platform.machine(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
