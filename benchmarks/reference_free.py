"""Do the reference-free scores rank the arms as the ground truth does?

Reads finished study runs (``analysis/metrics_long.csv``; the synthetic presets, where the truth is
known) and prints, as JSON lines, Spearman's rank correlation over arms × conditions (test split,
every repeat; Flat has no reference-free score) between

* the held-out-pattern Poisson NLL (relative; lower is better) and phase SSIM, and NRMSE;
* the half-scan FRC cut-off (phase; ½-bit and 1/7) and the ground-truth phase FRC50.

A good yardstick has |ρ| near 1 with the sign that says "better agrees with better": ρ < 0 for the
NLL against SSIM (> 0 against NRMSE), ρ > 0 for the half-scan FRC against FRC50.

Usage:
    ptychobench study run --preset quick --out runs/quick
    python benchmarks/reference_free.py runs/quick [runs/laptop ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from scipy.stats import spearmanr

#: (reference-free metric, its part, ground-truth metric, its part, sign of agreement)
PAIRS = (
    ("heldout_nll_rel", "value", "ssim", "phase", -1),
    ("heldout_nll_rel", "value", "nrmse", "value", +1),
    ("halfscan_frc_halfbit", "phase", "frc50", "phase", +1),
    ("halfscan_frc1over7", "phase", "frc50", "phase", +1),
)


def _cells(run: Path) -> dict[tuple, float]:
    """``{(dose, view, repeat, model, metric, part): value}`` of the test split."""
    path = run / "analysis" / "metrics_long.csv"
    if not path.is_file():
        print(f"error: {path}: not found (run the study first)", file=sys.stderr)
        raise SystemExit(2)
    out: dict[tuple, float] = {}
    with path.open(newline="") as fh:
        for r in csv.DictReader(fh):
            if r["split"] != "test":
                continue
            for part in ("amplitude", "phase", "value"):
                if r.get(part):
                    v = float(r[part])
                    if math.isfinite(v):
                        key = (r["dose"], r["view"], r.get("repeat") or "0", r["model"])
                        out[(*key, r["metric"], part)] = v
    return out


def correlations(run: Path) -> list[dict]:
    cells = _cells(run)
    units = sorted({k[:4] for k in cells})
    rows = []
    for free, free_part, truth, truth_part, sign in PAIRS:
        xs, ys = [], []
        for u in units:
            a, b = cells.get((*u, free, free_part)), cells.get((*u, truth, truth_part))
            if a is not None and b is not None:
                xs.append(a)
                ys.append(b)
        rho = float(spearmanr(xs, ys).statistic) if len(xs) >= 3 else float("nan")
        rows.append({
            "bench": "reference_free_rank", "run": str(run),
            "reference_free": f"{free} {free_part}", "ground_truth": f"{truth} {truth_part}",
            "n": len(xs),
            "arms": sorted({u[3] for u in units if (*u, free, free_part) in cells}),
            "spearman_rho": round(rho, 4), "agreeing_sign": sign,
            "agrees": bool(math.isfinite(rho) and rho * sign > 0),
            "abs_rho_ge_0_7": bool(math.isfinite(rho) and abs(rho) >= 0.7),
        })
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished study run directories")
    args = ap.parse_args(argv)
    for run in args.runs:
        for row in correlations(run):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
