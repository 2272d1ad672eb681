"""Why does PtychoPINN+TTR score below the network it refines? One change per rung, measured.

For every test cell of a finished study run that has a ``PtychoPINN+TTR`` arm, it re-runs test-
time refinement from the run's trained PtychoPINN on the cell's test data, once per rung, and
scores every rung against the truth in one :func:`ptychobench.evaluate.compare.compare` call with
the study's own settings (so they share the scored pixels). Rungs (each one change from the arm as
the run's design configures it, ``shipped``):

``PtychoPINN``      the start: the network's own reconstruction (the study's PtychoPINN arm)
``start``           ``epochs = 0``: TTR's global object of the *unrefined* network (each pattern
                    decoded alone, the N/2 window's flat weight, synchronised offsets)
``start probe-w``   ``start`` with ``|P|²`` weighting of the global object
``shipped``         the design's TTR settings
``probe-w``         ``shipped`` with ``|P|²`` weighting
``lr/10``           ``shipped`` with a ten times smaller step for the weights
``offsets frozen``  ``shipped`` with the per-pattern phase offsets held (step 1e-12)
``guarded``         the shipped arm's guard (``holdout``, if the design sets it) off → on

It prints one JSON line per cell and rung: phase / amplitude SSIM, NRMSE, seconds, and the
phase-SSIM difference to ``PtychoPINN``.

Usage: python benchmarks/ttr_ladder.py runs/quick [--cells dose_1000/dense ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--cells", nargs="*", default=None, help="dose_X/view to restrict to")
    ap.add_argument("--rungs", nargs="*", default=None)
    args = ap.parse_args(argv)

    from ptychobench.evaluate.compare import compare
    from ptychobench.models.bundle import load_bundle
    from ptychobench.refine import TTRConfig, refine
    from ptychobench.study import jobs as J
    from ptychobench.study.design import load_design

    design = load_design(args.run / "study.toml")
    objects = design.arm_objects()
    ttr_name = next((n for n, a in objects.items() if a.type_name == "PtychoPINN+TTR"), None)
    if ttr_name is None:
        print(f"error: {args.run}: the design has no PtychoPINN+TTR arm", file=sys.stderr)
        raise SystemExit(2)
    ttr = objects[ttr_name]
    pinn = objects[ttr.fit_from]
    for job in J.plan(design):
        if job.kind != "recon" or job.arm != ttr_name or job.repeat != 0:
            continue
        cell = f"{job.dd}/{job.view}"
        if args.cells and cell not in args.cells:
            continue
        rel = J._job_data(job)
        full = J._load(args.run / rel)
        ds = J._fair(full, ttr)
        ctx = J.arm_context(job, design, rel)
        art = J._artifact(job, design, args.run, ttr)
        s = ttr.settings
        base = dict(
            epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, max_seconds=s.max_seconds,
            phase_sync=ctx.phase_sync, seed=ctx.seed, device=ctx.device,
        )
        rungs = {
            "start": {**base, "epochs": 0},
            "start probe-w": {**base, "epochs": 0, "weighting": "probe"},
            "shipped": base,
            "probe-w": {**base, "weighting": "probe"},
            "lr/10": {**base, "lr": s.lr / 10},
            "offsets frozen": {**base, "phase_lr": 1e-12},
        }
        if args.rungs:
            rungs = {k: v for k, v in rungs.items() if k in args.rungs}
        recs = {"PtychoPINN": pinn.reconstruct(J._fair(full, pinn), ctx, artifact=art)}
        seconds = {"PtychoPINN": recs["PtychoPINN"].metadata.get("seconds")}
        for name, cfg in rungs.items():
            net, _ = load_bundle(art)
            t0 = time.perf_counter()
            res = refine(net, ds, TTRConfig(**cfg))
            recs[name] = res.reconstruction
            seconds[name] = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            out = compare(full, recs, tmp, J._compare_settings(job, design))
        start = out.metrics["PtychoPINN"]["ssim"][1]
        for name, m in out.metrics.items():
            if name not in recs:
                continue
            print(json.dumps({
                "bench": "ttr_ladder", "run": str(args.run), "cell": cell, "rung": name,
                "phase_ssim": round(m["ssim"][1], 4), "amp_ssim": round(m["ssim"][0], 4),
                "nrmse": round(m["nrmse"], 4),
                "d_phase_ssim_vs_start": round(m["ssim"][1] - start, 4),
                "seconds": round(seconds[name], 2) if seconds[name] else None,
            }), flush=True)


if __name__ == "__main__":
    main()
