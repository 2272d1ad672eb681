"""How many epochs does each iterative solver need? Phase SSIM and seconds per schedule.

Runs pty-chi's engines (LSQML, ePIE, rPIE, DM, RAAR), CDTools and PMACE — each fair: the known
probe fixed, the known positions, a flat start — on one dataset with truth (a study's test view,
say ``RUN/data/dose_10000/dense/test.npz``) at each epoch count, and scores them all in one
``compare`` call. Prints one JSON line per solver × epochs: phase / amplitude SSIM, NRMSE,
seconds. The peers need ``pip install -e '.[peers]'``; a missing one is skipped with its reason.

Usage: python benchmarks/solver_schedules.py DATA.npz [--epochs 25 50 100] [--solvers ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SOLVERS = ("lsqml", "epie", "rpie", "dm", "raar", "cdtools", "pmace")


def _run(ds, solver: str, epochs: int):
    from ptychobench import peers
    from ptychobench.iterative import IterativeConfig, reconstruct

    if solver == "cdtools":
        return peers.cdtools_reconstruct(ds, peers.CDToolsConfig(epochs=epochs),
                                         device="cpu")
    if solver == "pmace":
        return peers.pmace_reconstruct(ds, peers.PMACEConfig(iterations=epochs), device="cpu")
    return reconstruct(ds, IterativeConfig(engine=solver, epochs=epochs, device="cpu",
                                           progress=False))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--epochs", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    args = ap.parse_args(argv)

    from ptychobench.data.io import load
    from ptychobench.evaluate.compare import CompareSettings, compare
    from ptychobench.peers import missing_peer

    ds = load(args.data)
    for solver in args.solvers:
        module = {"cdtools": "cdtools", "pmace": "xptycho"}.get(solver)
        why = missing_peer(module, solver) if module else None
        if why:
            print(json.dumps({"bench": "solver_schedule", "solver": solver, "skipped": why}))
            continue
        for e in args.epochs:
            t0 = time.perf_counter()
            rec = _run(ds, solver, e)
            seconds = time.perf_counter() - t0
            with tempfile.TemporaryDirectory() as tmp:  # the same scored region for every run
                m = compare(ds, {solver: rec}, tmp, CompareSettings()).metrics[solver]
            print(json.dumps({
                "bench": "solver_schedule", "data": str(args.data), "solver": solver,
                "epochs": e, "phase_ssim": round(m["ssim"][1], 4),
                "amp_ssim": round(m["ssim"][0], 4), "nrmse": round(m["nrmse"], 4),
                "seconds": round(seconds, 2),
            }), flush=True)


if __name__ == "__main__":
    main()
