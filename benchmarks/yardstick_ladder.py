"""Why does the held-out NLL misrank arms on some probes? One change per rung, measured.

Reads finished synthetic study runs (the truth is known) and re-scores every method arm's test
reconstruction (``compare/<dose>/<view>/test/reconstructions.npz``, the ``<arm>_raw`` objects)
against the run's withheld patterns (``data/<dose>/heldout.npz``), once per *rung*. Each rung
changes one thing from the shipped score (``shipped``,
:func:`ptychobench.evaluate.reference_free.heldout_nll`):

``scale=1``
    no per-arm photon-scale fit: the known probe is on the data's photon scale.
``covered``
    only withheld positions whose probe footprint the kept scan illuminates (≥ 99 % of the
    pattern's probe intensity falls where the kept positions' summed ``|P|²`` is ≥ 1 % of its
    maximum); the others no arm can predict.
``fill``
    every arm's object set to one common value (``1 + 0j`` times the arm's median modulus)
    where the kept scan does not illuminate it (summed ``|P|²`` < 1 % of max): no arm is judged
    by what it invents where no pattern constrained it.
``deviance``
    the ratio of Poisson *deviances* (NLL minus the saturated NLL) instead of NLLs: the same
    order within a cell, but the ``log k!`` and noise floor no longer compress the ratio, so
    cells at different doses pool.
``fill+deviance``
    both.
``kept (in-sample)``
    the patterns every arm *was* given (the kept test positions), for contrast: a misranking
    that persists here is not a held-out sampling problem.

For each run and rung it prints one JSON line: Spearman ρ over arm × condition cells between the
score and phase SSIM / NRMSE (pooled, as ``benchmarks/reference_free.py`` does), the mean
within-condition ρ against phase SSIM, the fraction of conditions whose best arm by the score is
the best by phase SSIM, and the fraction of within-condition arm pairs that the truth separates
(phase SSIM ≥ 0.05 apart) which the score orders the same way — arms at the floor differ by
noise in the truth too, and a pooled ρ counts their order as much as the winner's.

Usage:
    python benchmarks/yardstick_ladder.py runs/quick runs/yard/*/
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from ptychobench.evaluate.reference_free import LAMBDA_FLOOR
from ptychobench.physics import extract_patches, intensity
from ptychobench.physics.patches import overlay_patches

RUNGS = ("shipped", "scale=1", "covered", "fill", "deviance", "fill+deviance", "kept (in-sample)")
LIT = 0.01  # fraction of the kept scan's maximum summed |P|² below which a pixel counts as unlit
FOOTPRINT = 0.99  # fraction of a pattern's probe intensity that must fall on lit pixels
NOT_METHODS = {"Flat", "Ceiling"}
SEPARATED = 0.05  # phase SSIM: two arms this far apart are told apart by the truth


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k != "metadata"}


def _coords(d: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([d["xcoords"], d["ycoords"]], axis=1).astype(np.float64)


def _illumination(probe: np.ndarray, coords: np.ndarray, shape) -> np.ndarray:
    """(H, W) summed |P|² of the positions ``coords``."""
    p2 = torch.from_numpy(np.abs(probe).astype(np.float64) ** 2)
    canvas, _ = overlay_patches(
        p2.expand(len(coords), *p2.shape).contiguous(), torch.from_numpy(coords), shape,
        method="bilinear",
    )
    return canvas.numpy()


def _nll(lam: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    lam = lam.clamp_min(LAMBDA_FLOOR)
    return (lam - k * torch.log(lam) + torch.lgamma(k + 1)).sum(dim=(-2, -1))


def _saturated(k: torch.Tensor) -> torch.Tensor:
    return _nll(k.clamp_min(LAMBDA_FLOOR), k)


def score(obj, probe, coords, counts, *, fit_scale=True, deviance=False) -> float:
    """Relative held-out NLL (or deviance) of ``obj``, lower is better."""
    k = torch.from_numpy(counts.astype(np.float64))
    N = k.shape[-1]
    o = torch.from_numpy(np.ascontiguousarray(obj, dtype=np.complex64))
    p = torch.from_numpy(np.ascontiguousarray(probe, dtype=np.complex64))
    pred = intensity(p * extract_patches(o, torch.from_numpy(coords), N)).to(torch.float64)
    s = float(k.sum() / pred.sum()) if fit_scale and float(pred.sum()) > 0 else 1.0
    nll = _nll(s * pred, k)
    ref = _nll(k.mean(dim=0, keepdim=True).expand_as(k), k)
    if deviance:
        sat = _saturated(k)
        nll, ref = nll - sat, ref - sat
    return float(nll.mean() / ref.mean())


def _cells(run: Path):
    """Yield (condition, {arm: raw object}, test data, held-out data, {arm: truth metrics})."""
    for mfile in sorted(run.glob("compare/*/*/test/metrics.json")):
        cell = mfile.parent
        dd, view = cell.parent.parent.name, cell.parent.name
        metrics = json.loads(mfile.read_text())["models"]
        recs = _load(cell / "reconstructions.npz")
        objs = {
            k[: -len("_raw")]: v for k, v in recs.items()
            if k.endswith("_raw") and k[: -len("_raw")] not in NOT_METHODS
        }
        data_dir = run / "data" / dd
        held = data_dir / "heldout.npz"
        if not held.exists():
            continue
        yield (dd, view), objs, _load(data_dir / "test.npz"), _load(held), metrics


def ladder(run: Path) -> list[dict]:
    rows: dict[str, list] = {r: [] for r in RUNGS}  # (condition, arm, score, ssim, nrmse)
    for cond, objs, test, held, metrics in _cells(run):
        probe = test["probeGuess"]
        kept_xy, held_xy = _coords(test), _coords(held)
        held_counts = held["diffraction"].astype(np.float64) ** 2
        kept_counts = test["diffraction"].astype(np.float64) ** 2
        any_obj = next(iter(objs.values()))
        illum = _illumination(probe, kept_xy, any_obj.shape)
        lit = illum >= LIT * illum.max()
        # a pattern's share of probe intensity on lit pixels
        lit_t = torch.from_numpy(lit.astype(np.complex64))
        p2 = np.abs(probe) ** 2
        share = (
            np.abs(extract_patches(lit_t, torch.from_numpy(held_xy), probe.shape[0]).numpy())
            * p2
        ).sum(axis=(1, 2)) / p2.sum()
        cover = share >= FOOTPRINT
        for arm, obj in objs.items():
            m = metrics.get(arm, {})
            ssim = (m.get("ssim") or {}).get("phase")
            nrmse = m.get("nrmse")
            if ssim is None or nrmse is None or not np.isfinite(obj).all():
                continue
            filled = np.where(lit, obj, np.median(np.abs(obj[lit])) + 0j).astype(np.complex64)
            got = {
                "shipped": score(obj, probe, held_xy, held_counts),
                "scale=1": score(obj, probe, held_xy, held_counts, fit_scale=False),
                "covered": (
                    score(obj, probe, held_xy[cover], held_counts[cover])
                    if cover.sum() >= 1 else math.nan
                ),
                "fill": score(filled, probe, held_xy, held_counts),
                "deviance": score(obj, probe, held_xy, held_counts, deviance=True),
                "fill+deviance": score(filled, probe, held_xy, held_counts, deviance=True),
                "kept (in-sample)": score(obj, probe, kept_xy, kept_counts),
            }
            for rung, v in got.items():
                rows[rung].append((cond, arm, v, ssim, nrmse, int(cover.sum()), len(cover)))
    out = []
    for rung, rs in rows.items():
        rs = [r for r in rs if math.isfinite(r[2])]
        if len(rs) < 3:
            continue
        v = np.array([r[2] for r in rs])
        ssim = np.array([r[3] for r in rs])
        nrmse = np.array([r[4] for r in rs])
        within, winners, pairs = [], [], []
        for cond in sorted({r[0] for r in rs}):
            sub = [r for r in rs if r[0] == cond]
            for i, a in enumerate(sub):  # pairs the truth separates: ordered alike?
                for b in sub[i + 1:]:
                    if abs(a[3] - b[3]) >= SEPARATED:
                        pairs.append((a[2] < b[2]) == (a[3] > b[3]))
            if len(sub) >= 3:
                within.append(spearmanr([r[2] for r in sub], [r[3] for r in sub]).statistic)
                winners.append(
                    min(sub, key=lambda r: r[2])[1] == max(sub, key=lambda r: r[3])[1]
                )
        covered = sorted({(r[0], r[5], r[6]) for r in rs})
        out.append({
            "bench": "yardstick_ladder", "run": str(run), "rung": rung, "n": len(rs),
            "rho_vs_phase_ssim": round(float(spearmanr(v, ssim).statistic), 4),
            "rho_vs_nrmse": round(float(spearmanr(v, nrmse).statistic), 4),
            "mean_within_condition_rho_vs_phase_ssim": round(float(np.nanmean(within)), 4),
            "winner_agrees": f"{sum(winners)}/{len(winners)}",
            "separated_pairs_agree": f"{sum(pairs)}/{len(pairs)}",
            "withheld_covered": f"{sum(c[1] for c in covered)}/{sum(c[2] for c in covered)}",
        })
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for run in args.runs:
        if not (run / "compare").is_dir():
            print(f"error: {run}: not a finished study run", file=sys.stderr)
            raise SystemExit(2)
        for row in ladder(run):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
