"""The hybrid arms' targets, read from a finished study run (no recomputation).

For every test-split condition (repeat 0) of RUN it prints one JSON line per arm (phase SSIM,
computation seconds) and one ``bench = "hybrid_targets"`` line with:

- ``ptychi_final`` / ``ptychi_s``: PtyChi's final phase SSIM and seconds (from flat, its full
  epoch count);
- ``hybrid_s_to_ptychi_final``: the first seconds at which PtychoPINN+LSQML's convergence curve
  reaches ``ptychi_final`` (None if it never does), and its ratio to ``ptychi_s`` (target ≤ 1/3);
- ``hybrid_final``: PtychoPINN+LSQML's final phase SSIM (target ≥ ``ptychi_final``);
- ``ttr``: PtychoPINN+TTR's phase SSIM (target ≥ ``ptychi_final`` at dose 1e3).

Usage: python benchmarks/hybrid_targets.py runs/laptop
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def _rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as fh:
        return {(r["model"], r["metric"]): r for r in csv.DictReader(fh)}


def _f(x: str | None) -> float | None:
    try:
        return float(x) if x not in (None, "") else None
    except ValueError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    args = ap.parse_args()
    for d in sorted((args.run / "compare").glob("dose_*")):
        if "_r" in d.name:
            continue  # repeat 0 only: its convergence curves
        for view_dir in sorted(p for p in d.iterdir() if p.is_dir()):
            cmp_dir = view_dir / "test"
            csv_path = cmp_dir / "comparison_metrics.csv"
            if not csv_path.exists():
                continue
            rows = _rows(csv_path)
            cond = {"dose": int(d.name.split("_")[1]), "view": view_dir.name}
            arms = sorted({m for m, _ in rows})
            for arm in arms:
                print(
                    json.dumps(
                        {
                            "bench": "hybrid_arm",
                            **cond,
                            "arm": arm,
                            "phase_ssim": _f(rows.get((arm, "ssim"), {}).get("phase")),
                            "seconds": _f(rows.get((arm, "computation_time_s"), {}).get("value")),
                        }
                    )
                )
            pty = _f(rows.get(("PtyChi", "ssim"), {}).get("phase"))
            pty_s = _f(rows.get(("PtyChi", "computation_time_s"), {}).get("value"))
            reach = None
            curve = cmp_dir / "convergence.csv"
            if curve.exists() and pty is not None:
                with curve.open(newline="") as fh:
                    pts = [r for r in csv.DictReader(fh) if r["model"] == "PtychoPINN+LSQML"]
                for r in pts:
                    if float(r["phase_ssim"]) >= pty:
                        reach = float(r["seconds"])
                        break
            print(
                json.dumps(
                    {
                        "bench": "hybrid_targets",
                        **cond,
                        "ptychi_final": pty,
                        "ptychi_s": pty_s,
                        "hybrid_final": _f(rows.get(("PtychoPINN+LSQML", "ssim"), {}).get("phase")),
                        "hybrid_s": _f(
                            rows.get(("PtychoPINN+LSQML", "computation_time_s"), {}).get("value")
                        ),
                        "hybrid_s_to_ptychi_final": reach,
                        "reach_ratio": None if reach is None or not pty_s else reach / pty_s,
                        "pinn": _f(rows.get(("PtychoPINN", "ssim"), {}).get("phase")),
                        "ttr": _f(rows.get(("PtychoPINN+TTR", "ssim"), {}).get("phase")),
                        "flat": _f(rows.get(("Flat", "ssim"), {}).get("phase")),
                    }
                )
            )


if __name__ == "__main__":
    main()
