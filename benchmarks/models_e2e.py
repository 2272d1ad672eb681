"""End to end on CPU: PtychoPINN (gs1, gs2), Baseline, PtyChi and the Flat floor on the test split.

Simulates image:camera+astronaut with the fly64 probe on a dense jittered raster (N=64), splits it
spatially along y, trains each network on the train split, reconstructs the test split, and scores
every arm with ``compare``. One JSON line per (dose, arm).

Usage: python benchmarks/models_e2e.py [--doses 1e3,1e4,1e5] [--epochs 30] [--scale 0.5]
       [--out runs/e2e] [--ptychi-epochs 100]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ptychobench.data.grouping import make_view
from ptychobench.data.split import split
from ptychobench.evaluate.compare import compare
from ptychobench.fit import fit
from ptychobench.infer import infer
from ptychobench.iterative import IterativeConfig, reconstruct
from ptychobench.models.bundle import load_bundle
from ptychobench.simulate import SimulationConfig, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--doses", default="1e3,1e4,1e5")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--object-size", type=int, default=512)
    ap.add_argument("--ptychi-epochs", type=int, default=100)
    ap.add_argument("--out", default="runs/e2e")
    ap.add_argument("--arms", default="pinn_gs1,pinn_gs2,baseline,ptychi")
    args = ap.parse_args()
    arms_wanted = args.arms.split(",")
    out = Path(args.out)
    for dose in (float(d) for d in args.doses.split(",")):
        ds = simulate(SimulationConfig(
            N=64, object="image:camera+astronaut", object_size=args.object_size, probe="fly64",
            scan="raster", overlap=0.7, jitter_px=1.0, dose=dose, seed=0,
        ))
        train_ds, test_ds = split(ds, axis="y", fraction=0.5)
        tcfg = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": 0}
        recs, train_s = {}, {}
        for arm in arms_wanted:
            d = out / f"dose_{int(dose)}" / arm
            t0 = time.perf_counter()
            if arm == "ptychi":
                rec = reconstruct(test_ds, IterativeConfig(epochs=args.ptychi_epochs,
                                                           progress=False))
                recs["PtyChi"] = rec
                continue
            if arm == "baseline":
                res = fit(train_ds, "baseline", d, train_config=tcfg, n_filters_scale=args.scale,
                          progress=False)
                name = "Baseline"
                test_view = test_ds
            else:
                g = 2 if arm.endswith("gs2") else 1
                tv = make_view(train_ds, g, neighbor_count=6, seed=0) if g == 2 else train_ds
                res = fit(tv, "pinn", d, gridsize=g, train_config=tcfg,
                          n_filters_scale=args.scale, progress=False)
                name = f"PtychoPINN_gs{g}"
                test_view = make_view(test_ds, g, neighbor_count=6, seed=0) if g == 2 else test_ds
            train_s[name] = time.perf_counter() - t0
            net, cfg = load_bundle(d)
            recs[name] = infer(net, test_view, train_stats=cfg["data"], arm=name)
            recs[name].metadata["train_seconds"] = train_s[name]
            recs[name].metadata["train_patterns_per_s"] = res.patterns_per_s
        res = compare(test_ds, recs, out / f"dose_{int(dose)}" / "compare")
        for arm, m in res.metrics.items():
            meta = recs[arm].metadata if arm in recs else {}
            print(json.dumps({
                "benchmark": "models_e2e", "dose": dose, "arm": arm, "split": "test",
                "n_patterns_test": test_ds.n, "n_patterns_train": train_ds.n,
                "phase_ssim": round(m["ssim"][1], 4), "amplitude_ssim": round(m["ssim"][0], 4),
                "phase_ms_ssim": round(m["ms_ssim"][1], 4),
                "amplitude_ms_ssim": round(m["ms_ssim"][0], 4),
                "nrmse": round(m["nrmse"], 4), "phase_frc50": round(m["frc50"][1], 4),
                "amplitude_frc50": round(m["frc50"][0], 4),
                "seconds": None if m["computation_time_s"] is None
                else round(m["computation_time_s"], 3),
                "train_seconds": round(meta.get("train_seconds", 0.0), 1),
            }), flush=True)
        for arm, err in res.errors.items():
            print(json.dumps({"benchmark": "models_e2e", "dose": dose, "arm": arm,
                              "error": err}), flush=True)


if __name__ == "__main__":
    main()
