"""Aggregate the per-condition comparison CSVs of a dose × view study into ``RUN/analysis/``.

Inputs are the ``comparison_metrics.csv`` files written by
:func:`ptychobench.evaluate.compare.compare`, one per condition, at
``RUN/compare/dose_{int(dose)}/{view}/{split}/comparison_metrics.csv``
(header ``model,metric,amplitude,phase,value``).

Outputs (every one written atomically, every one a pure function of the CSVs and the compare jobs'
statuses, so two runs of the same study give byte-identical files):

``analysis/metrics_long.csv``
    Every CSV row with its condition and repeat:
    ``dose,view,split,repeat,model,metric,amplitude,phase,value``.
``analysis/metrics_summary.json``
    Job counts, the per-condition means over repeats with their standard deviations and 95 %
    Student-t intervals, and the per-model aggregates over the held-out split (see
    :func:`summarise`). No wall-clock timing appears in it.
``analysis/metrics_summary.md``
    The same, as two short Markdown tables.
``analysis/deltas.json``
    PtychoPINN minus Baseline / PtyChi mean MS-SSIM and MAE, and the paired differences with
    their intervals over repeats (see :func:`deltas`).
``analysis/verdict.json``
    The best arm per view × dose × headline metric, its margin over the runner-up and that
    margin's interval; "tie" where the interval contains 0 (see :func:`verdicts`); "no verdict"
    where a reference-free score failed its check (``yardstick``, :func:`yardstick_check`).
``analysis/highlights.txt``
    Those deltas as exactly four fixed-format lines (see :func:`highlights_lines`).

The aggregate ("headline") numbers are taken over the conditions of one split only, the held-out
``test`` split by default: averaging train and test conditions would mix in-sample with
out-of-sample scores and flatter the trained arms.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ptychobench.arms.registry import DEFAULT_DELTAS, role_of
from ptychobench.data.io import atomic_open
from ptychobench.evaluate.compare import ARM_ORDER, TUPLE_METRICS
from ptychobench.study.design import dose_dir

__all__ = [
    "Lineup",
    "DELTA_METRICS",
    "LONG_COLUMNS",
    "LOWER_IS_BETTER",
    "TUPLE_METRICS",
    "aggregate",
    "UNTRUSTED",
    "YARDSTICKS",
    "collect_rows",
    "compare_dir",
    "compare_jobs_from_manifest",
    "condition_key",
    "deltas",
    "highlights_lines",
    "lineup_of",
    "read_comparison_csv",
    "summarise",
    "solver_agreement",
    "summary_json",
    "verdict_document",
    "yardstick_check",
]

@dataclasses.dataclass(frozen=True)
class Lineup:
    """Who is who in a run: each arm's role (``method``, ``floor``, ``ceiling``) and the arms of
    ``deltas.json`` (``subject`` minus each of ``against``). Read from the run's manifest
    (:func:`lineup_of`); an arm it does not list has its registered role."""

    roles: Mapping[str, str] = dataclasses.field(default_factory=dict)
    subject: str = DEFAULT_DELTAS[0]
    against: tuple[str, ...] = tuple(DEFAULT_DELTAS[1])
    #: ``{arm: solver library}`` of the iterative arms run from their own flat start.
    solvers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def role(self, name: str) -> str:
        return self.roles.get(name) or role_of(name)

    def candidates(self, names: Iterable[str]) -> list[str]:
        """The verdict candidates among ``names`` (methods; references never), in order."""
        return [n for n in _model_order(names) if self.role(n) == "method"]

    def reference(self, role: str, names: Iterable[str]) -> str | None:
        """The arm among ``names`` with this reference role (``floor`` / ``ceiling``)."""
        return next((n for n in _model_order(names) if self.role(n) == role), None)


def lineup_of(manifest: Mapping[str, Any]) -> Lineup:
    """The :class:`Lineup` recorded in a run's manifest (``arms``, ``design.deltas``)."""
    arms = manifest.get("arms") or {}
    d = (manifest.get("design") or {}).get("deltas") or {}
    return Lineup(
        roles={n: str(a.get("role", "method")) for n, a in arms.items() if isinstance(a, dict)},
        subject=d.get("subject", DEFAULT_DELTAS[0]),
        against=tuple(d.get("against", DEFAULT_DELTAS[1])),
        solvers={
            n: str(a["solver"]) for n, a in arms.items() if isinstance(a, dict) and a.get("solver")
        },
    )


#: Tuple metrics where a smaller value is better ("best" is then the minimum).
LOWER_IS_BETTER = frozenset({"mae", "mse", "nrmse", "heldout_nll_rel"})

#: Scalar rows never copied into the summary: wall-clock times differ between two runs of the
#: same study and would break the byte-identical ``metrics_summary.json``.
EXCLUDED_FROM_SUMMARY = frozenset({"computation_time_s", "train_s", "infer_s", "refine_s"})

#: Metrics of ``deltas.json``; the highlights use ``{metric: decimals}``.
DELTA_METRICS: dict[str, int] = {"ms_ssim": 3, "mae": 6}
_DELTA_LABELS = {"ms_ssim": "MS-SSIM", "mae": "MAE"}

LONG_COLUMNS: tuple[str, ...] = (
    "dose",
    "view",
    "split",
    "repeat",
    "model",
    "metric",
    "amplitude",
    "phase",
    "value",
)
CSV_NAME = "comparison_metrics.csv"

#: Metrics shown in the model table of ``metrics_summary.md``.
_MD_METRICS = ("ssim", "ms_ssim", "mae", "frc50")


# --------------------------------------------------------------------------------------------
# paths and keys
# --------------------------------------------------------------------------------------------


def compare_dir(run_dir: Path, dose: float, view: str, split: str, repeat: int = 0) -> Path:
    """Directory of one condition's comparison bundle.

    Parameters
    ----------
    run_dir : Path
        The study's run directory ``RUN``.
    dose : float
        Mean photons per pattern; the directory uses ``int(dose)`` (1e3 → ``dose_1000``).
    view, split : str
        Scan view (``"dense"``, ...) and data split (``"train"`` / ``"test"``).
    repeat : int, default 0
        Repeat index (0: the base seeds).

    Returns
    -------
    Path
        ``RUN/compare/dose_{int(dose)}[_r{repeat}]/{view}/{split}``.
    """
    return Path(run_dir) / "compare" / condition_key(dose, view, split, repeat)


def condition_key(dose: float, view: str, split: str, repeat: int = 0) -> str:
    """``"dose_1000/dense/test"`` (repeat 1: ``"dose_1000_r1/dense/test"``): the condition's
    path below ``compare/``, used as a dict key. Repeat 0's key is also the key of the
    condition's mean over repeats in ``metrics_summary.json``.
    """
    return f"{dose_dir(dose, int(repeat))}/{view}/{split}"


def compare_jobs_from_manifest(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The compare jobs of a study manifest in planned order, as :func:`summarise` takes them.

    Both the aggregate job and the verifier must build this list the same way (order included:
    it is copied into ``metrics_summary.json``), so both call this function.

    Parameters
    ----------
    manifest : mapping
        ``manifest.json`` content (``"planned"`` ids, ``"jobs"`` records).

    Returns
    -------
    list of dict
        ``{"id", "status", "dose", "view", "split", "error"}`` for each planned id whose record
        has ``kind == "compare"``; a planned compare id without a record is not listed.
    """
    records = manifest.get("jobs", {}) or {}
    out: list[dict[str, Any]] = []
    for jid in manifest.get("planned", []) or []:
        rec = records.get(jid)
        if not isinstance(rec, Mapping) or rec.get("kind") != "compare":
            continue
        out.append(
            {
                "id": jid,
                **{k: rec.get(k) for k in ("status", "dose", "view", "split", "error")},
                "repeat": int(rec.get("repeat") or 0),
            }
        )
    return out


def _unique_conditions(
    conditions: Iterable[Mapping[str, Any]],
) -> list[tuple[float, str, str, int]]:
    """(dose, view, split, repeat) in first-seen order, duplicates (by directory) dropped."""
    seen: set[str] = set()
    out: list[tuple[float, str, str, int]] = []
    for c in conditions:
        dose, view, split = float(c["dose"]), str(c["view"]), str(c["split"])
        repeat = int(c.get("repeat") or 0)
        key = condition_key(dose, view, split, repeat)
        if key not in seen:
            seen.add(key)
            out.append((dose, view, split, repeat))
    return out


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _cell(text: str, where: str, column: str) -> float | None:
    """Parse one numeric CSV cell: ``""`` → None, else ``float`` (NaN/inf kept as such)."""
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: column {column!r}: expected a number, found {text!r}") from None


def read_comparison_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of one ``comparison_metrics.csv`` with numbers parsed.

    Parameters
    ----------
    path : Path
        The CSV (header ``model,metric,amplitude,phase,value``).

    Returns
    -------
    list of dict
        Keys ``model, metric, amplitude, phase, value``; numeric cells as ``float``, empty cells
        as ``None``; ``value`` stays the message string on an ``error`` row.

    Raises
    ------
    ValueError
        Wrong header or a non-numeric metric cell; the message names the file and line.
    """
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        expected = ["model", "metric", "amplitude", "phase", "value"]
        if reader.fieldnames != expected:
            raise ValueError(
                f"{path}: header: expected {','.join(expected)}, found "
                f"{','.join(reader.fieldnames or [])!r}"
            )
        rows: list[dict[str, Any]] = []
        for raw in reader:
            where = f"{path}:{reader.line_num}"
            if None in raw or any(raw[k] is None for k in expected):
                raise ValueError(f"{where}: expected 5 fields, found a different number")
            metric = raw["metric"]
            value: Any
            if metric == "error":
                value = raw["value"]  # the arm's failure message
            else:
                value = _cell(raw["value"], where, "value")
            rows.append(
                {
                    "model": raw["model"],
                    "metric": metric,
                    "amplitude": _cell(raw["amplitude"], where, "amplitude"),
                    "phase": _cell(raw["phase"], where, "phase"),
                    "value": value,
                }
            )
    return rows


def collect_rows(run_dir: Path, conditions: list[dict]) -> list[dict]:
    """Every row of every existing ``comparison_metrics.csv``, tagged with its condition.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    conditions : list of dict
        ``{"dose": float, "view": str, "split": str}`` in the study's order (manifest
        ``"conditions"``). Conditions whose CSV does not exist (compare job failed or not run)
        contribute no rows; duplicates are read once.

    Returns
    -------
    list of dict
        Keys ``dose`` (float), ``view``, ``split``, ``repeat`` (int), ``model``, ``metric``,
        ``amplitude``, ``phase``, ``value`` (see :func:`read_comparison_csv`), ordered by
        condition then CSV line.
    """
    out: list[dict] = []
    for dose, view, split, repeat in _unique_conditions(conditions):
        path = compare_dir(Path(run_dir), dose, view, split, repeat) / CSV_NAME
        if not path.is_file():
            continue
        for row in read_comparison_csv(path):
            out.append({"dose": dose, "view": view, "split": split, "repeat": repeat, **row})
    return out


# --------------------------------------------------------------------------------------------
# summarising
# --------------------------------------------------------------------------------------------


def _finite(x: Any) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def _model_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    known = [a for a in ARM_ORDER if a in names]
    return known + sorted(n for n in names if n not in ARM_ORDER)


def _stats(values: list[float], metric: str) -> tuple[float | None, float | None]:
    """(mean, best) of finite values; None, None when there are none.

    ``math.fsum`` makes the mean correctly rounded, hence independent of the row order.
    """
    if not values:
        return None, None
    mean = math.fsum(values) / len(values)
    best = min(values) if metric in LOWER_IS_BETTER else max(values)
    return mean, best


#: How the 95 % intervals are computed (copied into the summary and deltas).
CI_METHOD = (
    "95 % Student-t interval over repeats: mean ± t(0.975, n-1)·s/√n with s the sample "
    "standard deviation (ddof = 1); none for a single repeat"
)


def interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and 95 % Student-t interval of ``values`` (repeats).

    Parameters
    ----------
    values : sequence of float
        One value per repeat (None and non-finite values are dropped first).

    Returns
    -------
    dict
        ``mean``, ``std`` (ddof = 1), ``ci95_low``, ``ci95_high``, ``n_repeats``. With one value
        ``std`` and the interval are None (one realisation has no spread); with none, all are None
        and ``n_repeats`` is 0. Sums use ``math.fsum`` so the result does not depend on order.
    """
    v = [float(x) for x in values if isinstance(x, int | float) and math.isfinite(x)]
    n = len(v)
    out: dict[str, Any] = {
        "mean": None,
        "std": None,
        "ci95_low": None,
        "ci95_high": None,
        "n_repeats": n,
    }
    if n == 0:
        return out
    mean = math.fsum(v) / n
    out["mean"] = mean
    if n >= 2:
        from scipy.stats import t

        std = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (n - 1))
        half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        out.update(std=std, ci95_low=mean - half, ci95_high=mean + half)
    return out


def is_tie(stats: Mapping[str, Any]) -> bool | None:
    """Whether a paired difference's interval contains 0 (None: no interval, one repeat)."""
    lo, hi = stats.get("ci95_low"), stats.get("ci95_high")
    if lo is None or hi is None:
        return None
    return lo <= 0.0 <= hi


def _parts(metric: str) -> tuple[str, ...]:
    return ("amplitude", "phase") if metric in TUPLE_METRICS else ("value",)


def _cells(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], dict[int, dict]]:
    """``{(mean condition key, model, metric): {repeat: row}}`` of the metric rows."""
    out: dict[tuple[str, str, str], dict[int, dict]] = {}
    for r in rows:
        if r["metric"] == "error" or r["metric"] in EXCLUDED_FROM_SUMMARY:
            continue
        key = condition_key(r["dose"], r["view"], r["split"])
        out.setdefault((key, r["model"], r["metric"]), {})[int(r.get("repeat") or 0)] = r
    return out


def mean_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (condition, model, metric): the mean over repeats of each finite part.

    Rows keep the columns of :func:`collect_rows` with ``repeat`` = 0 and the condition of
    repeat 0; error rows of any repeat are kept (first one per condition and model). With one
    repeat the rows are returned unchanged in value (``fsum([x]) / 1 == x``). Cost rows are
    averaged like metrics.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        k = (float(r["dose"]), r["view"], r["split"], r["model"], r["metric"])
        groups.setdefault(k, []).append(r)
    out = []
    for (dose, view, split, model, metric), rs in groups.items():
        row: dict[str, Any] = {
            "dose": dose, "view": view, "split": split, "repeat": 0, "model": model,
            "metric": metric,
        }
        if metric == "error":
            row.update(amplitude=None, phase=None, value=rs[0]["value"])
        else:
            for part in ("amplitude", "phase", "value"):
                row[part] = interval([x[part] for x in rs if _finite(x[part])])["mean"]
        out.append(row)
    return out


def summarise(
    rows: list[dict],
    jobs: list[dict],
    aggregate_split: str = "test",
    repeats: Sequence[Mapping[str, Any]] | None = None,
) -> dict:
    """The content of ``metrics_summary.json``.

    Parameters
    ----------
    rows : list of dict
        Output of :func:`collect_rows` (every repeat).
    jobs : list of dict
        The compare jobs in planned order: ``{"id", "status", "dose", "view", "split",
        "repeat"?, "error"?}``.
    aggregate_split : str, default "test"
        Only conditions of this split enter ``aggregate_metrics`` (the honest headline is the
        held-out split).
    repeats : sequence of dict, optional
        ``[{"repeat": r, "seeds": {...}}]`` as recorded in the manifest; copied.

    Returns
    -------
    dict
        ``n_jobs``, ``n_success`` (compare jobs with status ``"success"``), ``n_failed`` (compare
        jobs not ``"success"`` plus successful/unplanned conditions whose CSV has an ``error``
        row; each condition counted once), ``n_arm_errors`` (number of (condition, arm) ``error``
        rows), ``arm_errors`` (``[{"condition", "model", "error"}]``, condition with its repeat),
        ``jobs`` (``[{"id", "dose", "view", "split", "repeat", "status"}]``), ``aggregate_split``,
        ``aggregate_conditions`` (condition keys that have rows in that split),
        ``aggregate_metrics`` (``{model: {metric: {"mean_amplitude", "mean_phase",
        "best_amplitude", "best_phase", "n", "n_amplitude", "n_phase"}}}`` over the conditions'
        means, tuple metrics only; best = min for mae/mse/nrmse, max otherwise; missing/NaN cells
        skipped; ``n`` = conditions with at least one finite part), ``by_condition``
        (``{"dose_1000/dense/test": {model: {metric: {"amplitude", "phase"} | {"value"}}}}``:
        the mean over repeats), ``uncertainty`` (same keys, then ``{part: {"mean", "std",
        "ci95_low", "ci95_high", "n_repeats"}}``, see :func:`interval`), ``n_repeats``,
        ``repeats`` and ``ci_method``. Cost rows are left out everywhere.
    """
    job_list = [
        {
            "id": str(j["id"]),
            "dose": float(j["dose"]),
            "view": str(j["view"]),
            "split": str(j["split"]),
            "repeat": int(j.get("repeat") or 0),
            "status": str(j["status"]),
        }
        for j in jobs
    ]
    not_ok = [j for j in job_list if j["status"] != "success"]
    failed_keys = {
        condition_key(j["dose"], j["view"], j["split"], j["repeat"]) for j in not_ok
    }

    by_condition: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    uncertainty: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    arm_errors: list[dict[str, str]] = []
    for r in rows:
        if r["metric"] == "error":
            key = condition_key(r["dose"], r["view"], r["split"])
            by_condition.setdefault(key, {}).setdefault(r["model"], {}).setdefault(
                "error", {"value": str(r["value"])}
            )
            rkey = condition_key(r["dose"], r["view"], r["split"], int(r.get("repeat") or 0))
            arm_errors.append({"condition": rkey, "model": r["model"], "error": str(r["value"])})
    # per model/metric of the aggregate split: lists of finite condition means
    acc: dict[str, dict[str, dict[str, Any]]] = {}
    agg_conditions: list[str] = []
    for (key, model, metric), per_repeat in _cells(rows).items():
        reps = [per_repeat[k] for k in sorted(per_repeat)]
        stats = {p: interval([x[p] for x in reps if _finite(x[p])]) for p in _parts(metric)}
        by_condition.setdefault(key, {}).setdefault(model, {})[metric] = {
            p: st["mean"] for p, st in stats.items()
        }
        uncertainty.setdefault(key, {}).setdefault(model, {})[metric] = stats
        if reps[0]["split"] != aggregate_split or metric not in TUPLE_METRICS:
            continue
        if key not in agg_conditions:
            agg_conditions.append(key)
        a = acc.setdefault(model, {}).setdefault(metric, {"amp": [], "ph": [], "n": 0})
        amp, ph = stats["amplitude"]["mean"], stats["phase"]["mean"]
        if amp is not None:
            a["amp"].append(amp)
        if ph is not None:
            a["ph"].append(ph)
        if amp is not None or ph is not None:
            a["n"] += 1

    aggregate_metrics: dict[str, dict[str, dict[str, Any]]] = {}
    for model in _model_order(acc):
        per_metric: dict[str, dict[str, Any]] = {}
        for metric in TUPLE_METRICS:
            if metric not in acc[model]:
                continue
            a = acc[model][metric]
            mean_a, best_a = _stats(a["amp"], metric)
            mean_p, best_p = _stats(a["ph"], metric)
            per_metric[metric] = {
                "mean_amplitude": mean_a,
                "mean_phase": mean_p,
                "best_amplitude": best_a,
                "best_phase": best_p,
                "n": a["n"],
                "n_amplitude": len(a["amp"]),
                "n_phase": len(a["ph"]),
            }
        aggregate_metrics[model] = per_metric

    # A condition fails once: its job failed/blocked, or (job fine) an arm wrote an error row.
    error_keys = {e["condition"] for e in arm_errors}
    n_failed = len(not_ok) + len(error_keys - failed_keys)
    reps = [dict(r) for r in (repeats or [])]
    return {
        "n_jobs": len(job_list),
        "n_success": sum(1 for j in job_list if j["status"] == "success"),
        "n_failed": n_failed,
        "n_arm_errors": len(arm_errors),
        "arm_errors": arm_errors,
        "jobs": job_list,
        "aggregate_split": aggregate_split,
        "aggregate_conditions": agg_conditions,
        "aggregate_metrics": aggregate_metrics,
        "by_condition": by_condition,
        "uncertainty": uncertainty,
        "n_repeats": max([len(reps)] + [j["repeat"] + 1 for j in job_list]),
        "repeats": reps,
        "ci_method": CI_METHOD,
    }


def summary_json(summary: Mapping[str, Any]) -> str:
    """The canonical text of ``metrics_summary.json`` / ``deltas.json`` (sorted, no NaN)."""
    return json.dumps(summary, sort_keys=True, indent=2, allow_nan=False) + "\n"


def _mean(summary: Mapping[str, Any], model: str, metric: str, part: str) -> float | None:
    m = summary.get("aggregate_metrics", {}).get(model, {}).get(metric)
    if not m:
        return None
    v = m.get(f"mean_{part}")
    return v if _finite(v) else None


#: Metrics of the paired differences in ``deltas.json``.
PAIRED_METRICS: tuple[str, ...] = ("ssim", "ms_ssim", "mae", "frc50", "nrmse")
#: (metric, part, label) of the verdict grid; the first is the headline.
VERDICT_METRICS: tuple[tuple[str, str, str], ...] = (
    ("ssim", "phase", "phase SSIM"),
    ("ssim", "amplitude", "amplitude SSIM"),
    ("ms_ssim", "phase", "phase MS-SSIM"),
    ("frc50", "phase", "phase FRC50"),
    ("nrmse", "value", "NRMSE"),
    # reference-free (no ground truth needed; test split): see evaluate.reference_free
    ("heldout_nll_rel", "value", "held-out NLL (rel.)"),
    ("halfscan_frc_halfbit", "phase", "half-scan FRC ½-bit (phase)"),
)


#: The reference-free scores and the ground-truth score each stands in for: ``(metric, part) →
#: (truth metric, part, sign)``; sign +1 when higher agrees with higher.
YARDSTICKS: dict[tuple[str, str], tuple[str, str, int]] = {
    ("heldout_nll_rel", "value"): ("ssim", "phase", -1),
    ("halfscan_frc_halfbit", "phase"): ("frc50", "phase", +1),
}
#: |Spearman ρ| (with the agreeing sign) a reference-free score needs before it may name a winner.
TRUST_RHO = 0.7
#: Two arms of one condition this far apart on the compared score count as told apart.
SEPARATED = 0.05


def _condition_means(cells, names, metric: str, part: str) -> dict[tuple[str, float, str], float]:
    """``{(view, dose, arm): mean over repeats}`` of the candidate arms' finite values."""
    out = {}
    for (dose, view, arm, m), reps in cells.items():
        if m == metric and arm in names:
            mean = interval([x[part] for x in reps.values()])["mean"]
            if mean is not None:
                out[(view, dose, arm)] = mean
    return out


def _winners(means: Mapping[tuple, float], lower: bool) -> dict[tuple[str, float], str]:
    """The best arm per (view, dose) of :func:`_condition_means`."""
    best: dict[tuple[str, float], str] = {}
    for (view, dose, arm), x in sorted(means.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        b = best.get((view, dose))
        if b is None or (x < means[(view, dose, b)] if lower else x > means[(view, dose, b)]):
            best[(view, dose)] = arm
    return best


def _agreement(a: Mapping, b: Mapping, lower_a: bool, lower_b: bool, sign: int) -> dict[str, Any]:
    """How far score ``a`` ranks the arm × condition cells as ``b`` does: pooled Spearman ρ,
    and the conditions whose best arm differs."""
    from scipy.stats import spearmanr

    keys = sorted(set(a) & set(b))
    rho = None
    if len(keys) >= 3 and len({a[k] for k in keys}) > 1 and len({b[k] for k in keys}) > 1:
        rho = float(spearmanr([a[k] for k in keys], [b[k] for k in keys]).statistic)
    wa, wb = _winners({k: a[k] for k in keys}, lower_a), _winners({k: b[k] for k in keys}, lower_b)
    both = sorted(set(wa) & set(wb))
    disagree = [
        {"view": v, "dose": d, "by_score": wa[(v, d)], "by_other": wb[(v, d)]}
        for v, d in both
        if wa[(v, d)] != wb[(v, d)]
    ]
    trusted = rho is not None and math.isfinite(rho) and rho * sign >= TRUST_RHO
    # arm pairs of one condition that ``b`` tells apart: does ``a`` order them alike? (arms at
    # the floor differ by noise in the truth too; a pooled ρ counts their order as much as the
    # winner's)
    agree = n_pairs = 0
    for i, k in enumerate(keys):
        for j in keys[i + 1:]:
            if k[:2] == j[:2] and abs(b[k] - b[j]) >= SEPARATED:
                n_pairs += 1
                agree += ((a[k] - a[j]) * (b[k] - b[j]) * sign) > 0
    return {
        "rho": rho, "sign": sign, "n": len(keys), "conditions": len(both),
        "winner_agrees": len(both) - len(disagree), "disagree": disagree, "trusted": trusted,
        "separated_pairs": n_pairs, "separated_agree": agree,
    }


def yardstick_check(
    rows: Sequence[Mapping[str, Any]], split: str = "test", lineup: Lineup | None = None
) -> dict[str, Any]:
    """May this run's reference-free scores name a winner? Measured, not assumed.

    With ground truth (a synthetic run) each score of :data:`YARDSTICKS` is checked against the
    truth score it stands in for: Spearman ρ over the method arms × conditions (means over
    repeats) must reach :data:`TRUST_RHO` with the agreeing sign, and the conditions where it
    names another winner than the truth are listed. Without ground truth (measured data) the
    two scores are checked against each other the same way (a better held-out NLL should go with
    a better half-scan FRC): two independent yardsticks that disagree mean neither can be
    believed there.

    Returns
    -------
    dict
        ``mode`` (``"truth"`` | ``"consistency"`` | ``"none"``), ``threshold`` and ``scores``:
        ``{metric: {"part", "against": "metric part", "rho", "sign", "n", "conditions",
        "winner_agrees", "disagree": [{"view", "dose", "by_score", "by_other"}], "trusted",
        "separated_pairs", "separated_agree"}}`` (the last two: the arm pairs of one condition
        ``against`` puts :data:`SEPARATED` or more apart, and how many of them the score orders
        alike).
    """
    lineup = lineup or Lineup()
    cells = _per_repeat(rows, split)
    names = set(lineup.candidates({k[2] for k in cells}))
    scores: dict[str, Any] = {}
    truth_known = bool(_condition_means(cells, names, "ssim", "phase"))
    for (metric, part), (tm, tp, sign) in YARDSTICKS.items():
        a = _condition_means(cells, names, metric, part)
        if not a:
            continue
        if truth_known:
            against = (tm, tp, sign)
        else:  # the other yardstick
            others = [(m, p) for m, p in YARDSTICKS if m != metric]
            om, op = others[0]
            same = (metric in LOWER_IS_BETTER) == (om in LOWER_IS_BETTER)
            against = (om, op, +1 if same else -1)
        b = _condition_means(cells, names, against[0], against[1])
        found = _agreement(
            a, b, metric in LOWER_IS_BETTER, against[0] in LOWER_IS_BETTER, against[2]
        )
        scores[metric] = {"part": part, "against": f"{against[0]} {against[1]}", **found}
    mode = "none" if not scores else ("truth" if truth_known else "consistency")
    return {"mode": mode, "threshold": TRUST_RHO, "scores": scores}


def _yardstick_verdict(check: Mapping[str, Any], metric: str, view: str, dose: float):
    """``{"trusted", "reason"}`` for the verdict of reference-free ``metric`` at one condition."""
    s = check["scores"].get(metric)
    if s is None:
        return None
    truth = check["mode"] == "truth"
    other = "the truth" if truth else "the other reference-free score"
    if s["rho"] is None:
        return {
            "trusted": False,
            "reason": f"not checked: too few scored arms to rank against {other}",
        }
    if not s["trusted"]:
        return {
            "trusted": False,
            "reason": (
                f"it ranks the arms unlike {other} in this run (Spearman ρ = {s['rho']:+.2f} vs "
                f"{s['against']}, needed {s['sign'] * check['threshold']:+.1f} or beyond)"
            ),
        }
    for d in s["disagree"]:
        if d["view"] == view and d["dose"] == dose:
            return {
                "trusted": False,
                "reason": f"it picks {d['by_score']} here, {other} picks {d['by_other']}",
            }
    return {"trusted": True, "reason": ""}


def _per_repeat(rows: Iterable[Mapping[str, Any]], split: str) -> dict[tuple, dict[int, dict]]:
    """``{(dose, view, model, metric): {repeat: row}}`` of one split's metric rows."""
    out: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        if r["split"] != split or r["metric"] == "error":
            continue
        k = (float(r["dose"]), r["view"], r["model"], r["metric"])
        out.setdefault(k, {})[int(r.get("repeat") or 0)] = r
    return out


def _paired(a: Mapping[int, Mapping], b: Mapping[int, Mapping], part: str) -> list[float]:
    """Per-repeat differences a − b where both repeats have a finite value (paired data)."""
    return [
        a[r][part] - b[r][part]
        for r in sorted(set(a) & set(b))
        if _finite(a[r][part]) and _finite(b[r][part])
    ]


def deltas(
    summary: dict, rows: Sequence[Mapping[str, Any]] = (), lineup: Lineup | None = None
) -> dict:
    """The subject arm (PtychoPINN by default) minus the others (``deltas.json``).

    Parameters
    ----------
    summary : dict
        Output of :func:`summarise`.
    rows : sequence of dict
        Output of :func:`collect_rows` (every repeat): the paired differences come from them.
    lineup : Lineup, optional
        The subject and the arms it is set against (default: the built-in lineup).

    Returns
    -------
    dict
        ``{"vs_Baseline": {"ms_ssim": {"phase", "amplitude"}, "mae": {...}}, "vs_PtyChi": {...},
        "aggregate_split": "test", "definition": "...", "paired": {...}}``. A mean delta is None
        where either mean is missing; positive is better for ms_ssim, negative for mae.
        ``paired`` holds, for every other arm and metric of :data:`PAIRED_METRICS`, the
        interval (:func:`interval`) of the per-repeat differences PtychoPINN − arm: per
        condition of the split (``by_condition``) and of the per-repeat mean over the split's
        conditions (``aggregate``). Same data and seeds ⇒ paired; identical arms give [0, 0].
    """
    lineup = lineup or Lineup()
    subject = lineup.subject
    split = summary.get("aggregate_split", "test")
    out: dict[str, Any] = {
        "aggregate_split": split,
        "definition": f"{subject} mean minus other arm mean over the {split}-split conditions",
    }
    for other in lineup.against:
        block: dict[str, dict[str, float | None]] = {}
        for metric in DELTA_METRICS:
            block[metric] = {}
            for part in ("phase", "amplitude"):
                mine = _mean(summary, subject, metric, part)
                theirs = _mean(summary, other, metric, part)
                block[metric][part] = None if mine is None or theirs is None else mine - theirs
        out[f"vs_{other}"] = block
    out["paired"] = _paired_deltas(rows, split, subject)
    return out


def _paired_deltas(
    rows: Sequence[Mapping[str, Any]], split: str, subject: str
) -> dict[str, Any]:
    cells = _per_repeat(rows, split)
    models = _model_order({k[2] for k in cells})
    conds = list(dict.fromkeys((k[0], k[1]) for k in cells))
    by_condition: dict[str, Any] = {}
    # per other arm / metric / part: {repeat: [differences over conditions]}
    per_rep: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    for dose, view in conds:
        key = condition_key(dose, view, split)
        mine_all = {m: cells.get((dose, view, subject, m)) for m in PAIRED_METRICS}
        for other in models:
            if other == subject:
                continue
            block: dict[str, Any] = {}
            for metric in PAIRED_METRICS:
                mine, theirs = mine_all[metric], cells.get((dose, view, other, metric))
                if not mine or not theirs:
                    continue
                block[metric] = {}
                for part in _parts(metric):
                    block[metric][part] = interval(_paired(mine, theirs, part))
                    for r in sorted(set(mine) & set(theirs)):
                        a, b = mine[r][part], theirs[r][part]
                        if _finite(a) and _finite(b):
                            per_rep.setdefault((other, metric, part), {}).setdefault(
                                r, []
                            ).append(a - b)
            if block:
                by_condition.setdefault(key, {})[f"vs_{other}"] = block
    aggregate: dict[str, Any] = {}
    for (other, metric, part), reps in per_rep.items():
        means = [math.fsum(v) / len(v) for _, v in sorted(reps.items())]
        aggregate.setdefault(f"vs_{other}", {}).setdefault(metric, {})[part] = interval(means)
    return {
        "ci_method": CI_METHOD,
        "definition": f"per repeat: {subject} minus the other arm on the same data and seeds; "
        "aggregate: per repeat, the mean of those differences over the split's conditions",
        "by_condition": by_condition,
        "aggregate": aggregate,
    }


def verdicts(
    rows: Sequence[Mapping[str, Any]], split: str = "test", lineup: Lineup | None = None
) -> list[dict[str, Any]]:
    """Which arm wins each (view, dose, metric) of ``split``, by how much, how surely.

    Parameters
    ----------
    rows : sequence of dict
        Output of :func:`collect_rows` (every repeat).
    split : str
        The held-out split by default.
    lineup : Lineup, optional
        The arms' roles: only methods are candidates; the floor and the ceiling are reported
        beside them.

    Returns
    -------
    list of dict
        One per view × dose × :data:`VERDICT_METRICS` entry (views, then doses ascending):
        ``view``, ``dose``, ``metric``, ``part``, ``label``, ``means`` (``{arm: mean over
        repeats}`` of the candidate arms with a value), ``floor`` (the floor arm's mean, the
        constant-object floor, or None), ``ceiling`` (the ceiling arm's mean; only where the
        run has one), ``leader`` (best mean), ``runner_up``,
        ``margin`` (mean of the per-repeat differences leader − runner-up, signed so that
        positive means the leader is better, also for lower-is-better metrics), ``ci95_low`` /
        ``ci95_high`` / ``n_repeats`` (:func:`interval` of those differences), ``tie`` (the
        interval contains 0; None with one repeat) and ``arm`` (the leader, or ``"tie"``).
        ``leader`` is None where no arm has a value; ``runner_up`` None with a single arm.
    """
    lineup = lineup or Lineup()
    cells = _per_repeat(rows, split)
    check = yardstick_check(rows, split, lineup)
    views = list(dict.fromkeys(k[1] for k in cells))
    doses = sorted({k[0] for k in cells})
    names = {k[2] for k in cells}
    candidates = lineup.candidates(names)
    floor_arm = lineup.reference("floor", names)
    ceiling_arm = lineup.reference("ceiling", names)
    out: list[dict[str, Any]] = []
    for view in views:
        for dose in doses:
            for metric, part, label in VERDICT_METRICS:
                lower = metric in LOWER_IS_BETTER
                means: dict[str, float] = {}
                for arm in candidates:
                    reps = cells.get((dose, view, arm, metric))
                    if reps:
                        m = interval([x[part] for x in reps.values()])["mean"]
                        if m is not None:
                            means[arm] = m
                ranked = sorted(means, key=lambda a: (means[a] if lower else -means[a]))
                floor = cells.get((dose, view, floor_arm, metric)) if floor_arm else None
                v: dict[str, Any] = {
                    "view": view, "dose": dose, "metric": metric, "part": part, "label": label,
                    "means": means, "leader": ranked[0] if ranked else None,
                    "runner_up": ranked[1] if len(ranked) > 1 else None,
                    "floor": interval([x[part] for x in floor.values()])["mean"] if floor else None,
                }
                if ceiling_arm:
                    top = cells.get((dose, view, ceiling_arm, metric))
                    top_mean = interval([x[part] for x in top.values()])["mean"] if top else None
                    v["ceiling"] = top_mean
                st = interval([])
                if len(ranked) > 1:
                    a = cells[(dose, view, ranked[0], metric)]
                    b = cells[(dose, view, ranked[1], metric)]
                    diffs = _paired(a, b, part)
                    st = interval([-d for d in diffs] if lower else diffs)
                tie = is_tie(st)
                v.update(
                    margin=st["mean"], ci95_low=st["ci95_low"], ci95_high=st["ci95_high"],
                    n_repeats=st["n_repeats"], tie=tie,
                    arm="tie" if tie else v["leader"],
                )
                trust = _yardstick_verdict(check, metric, view, dose) if v["leader"] else None
                if trust is not None:
                    v["yardstick"] = trust
                    if not trust["trusted"]:
                        v["arm"] = UNTRUSTED
                out.append(v)
    return out


#: The verdict ``arm`` of a reference-free score that may not name a winner (see
#: :func:`yardstick_check`).
UNTRUSTED = "no verdict"


def _signed(x: Any, decimals: int) -> str:
    if not _finite(x):
        return "n/a"
    return f"{x:+.{decimals}f}"


def highlights_lines(d: dict, lineup: Lineup | None = None) -> list[str]:
    """Two lines per arm the subject is set against (default: MS-SSIM and MAE deltas vs
    Baseline, then vs PtyChi, four lines); phase first.

    Parameters
    ----------
    d : dict
        Output of :func:`deltas`.
    lineup : Lineup, optional
        The subject and the arms it is set against (default: the built-in lineup).

    Returns
    -------
    list of str
        e.g. ``"MS-SSIM Δ (PtychoPINN - Baseline)  : phase +0.015  amplitude +0.010"``;
        MS-SSIM with 3 decimals, MAE with 6, signed; a missing delta reads ``n/a``. No trailing
        newlines.
    """
    lineup = lineup or Lineup()
    labels = {
        (other, metric): f"{_DELTA_LABELS[metric]} Δ ({lineup.subject} - {other})"
        for other in lineup.against
        for metric in DELTA_METRICS
    }
    width = max((len(x) for x in labels.values()), default=0) + 2  # the label column
    lines: list[str] = []
    for other in lineup.against:
        block = d.get(f"vs_{other}", {}) or {}
        for metric, decimals in DELTA_METRICS.items():
            cell = block.get(metric, {}) or {}
            label = labels[(other, metric)].ljust(width)
            lines.append(
                f"{label}: phase {_signed(cell.get('phase'), decimals)}  "
                f"amplitude {_signed(cell.get('amplitude'), decimals)}"
            )
    return lines


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _csv_cell(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return repr(x)
    return str(x)


def _long_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LONG_COLUMNS)
    for r in rows:
        w.writerow([_csv_cell(r[c]) for c in LONG_COLUMNS])
    return buf.getvalue()


def _md_num(x: Any) -> str:
    if not _finite(x):
        return "n/a"
    return f"{x:.4g}"


def _markdown(summary: Mapping[str, Any]) -> str:
    split = summary["aggregate_split"]
    agg = summary["aggregate_metrics"]
    lines = [
        "# Metrics summary",
        "",
        f"Compare jobs: {summary['n_jobs']} planned, {summary['n_success']} succeeded, "
        f"{summary['n_failed']} failed (arm errors: {summary['n_arm_errors']}).",
        "",
        f"## Mean over the {split}-split conditions ({len(summary['aggregate_conditions'])})",
        "",
    ]
    header = ["model"]
    for metric in _MD_METRICS:
        header += [f"{metric} amp", f"{metric} phase"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for model in _model_order(agg):
        cells = [model]
        for metric in _MD_METRICS:
            m = agg[model].get(metric, {})
            cells += [_md_num(m.get("mean_amplitude")), _md_num(m.get("mean_phase"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "mae: lower is better; ssim, ms_ssim, frc50: higher is better.", ""]

    by = summary["by_condition"]
    models = _model_order({m for cond in by.values() for m in cond})
    lines += ["## Phase SSIM per condition", ""]
    lines.append("| condition | " + " | ".join(models) + " |")
    lines.append("|" + "---|" * (len(models) + 1))
    for key, cond in by.items():
        cells = [key]
        for model in models:
            m = cond.get(model, {})
            if "error" in m:
                cells.append("error")
            else:
                cells.append(_md_num(m.get("ssim", {}).get("phase")))
        lines.append("| " + " | ".join(cells) + " |")
    if summary["arm_errors"]:
        lines += ["", "## Arm errors", ""]
        for e in summary["arm_errors"]:
            msg = e["error"].replace("|", "\\|")
            lines.append(f"- {e['condition']} {e['model']}: {msg}")
    return "\n".join(lines) + "\n"


#: (metric, part) of the agreement table; the first is the one the spreads are taken on.
AGREEMENT_METRICS: tuple[tuple[str, str], ...] = (
    ("ssim", "phase"), ("ssim", "amplitude"), ("nrmse", "value"),
)


def solver_agreement(
    rows: Sequence[Mapping[str, Any]],
    lineup: Lineup | None = None,
    split: str = "test",
    seconds: bool = False,
) -> list[dict[str, Any]]:
    """Do the iterative solvers agree on what the data give? One entry per condition.

    The solver arms are the methods the lineup marks with a library (``Lineup.solvers``:
    iterative, from their own flat start). Per (view, dose) of ``split``: each one's means over
    repeats of :data:`AGREEMENT_METRICS`, the floor's and the ceiling's phase SSIM, the best
    solver, ``spread`` (best − worst phase SSIM over every solver) and ``independent_spread``
    (the same between the best arm of each library: how far the answer depends on whose code
    solved it; None with one library). Empty with fewer than two solver arms. ``seconds``: add
    each arm's mean ``computation_time_s`` (the report's cost column; kept out of
    ``verdict.json``, whose bytes must not depend on the machine's speed).
    """
    lineup = lineup or Lineup()
    cells = _per_repeat(rows, split)
    names = {k[2] for k in cells}
    solvers = [n for n in lineup.candidates(names) if n in lineup.solvers]
    if len(solvers) < 2:
        return []
    refs = {role: lineup.reference(role, names) for role in ("floor", "ceiling")}
    out = []
    for view in dict.fromkeys(k[1] for k in cells):
        for dose in sorted({k[0] for k in cells if k[1] == view}):
            def mean(arm, metric, part, view=view, dose=dose):
                reps = cells.get((dose, view, arm, metric))
                return interval([x[part] for x in reps.values()])["mean"] if reps else None

            metrics = AGREEMENT_METRICS + ((("computation_time_s", "value"),) if seconds else ())
            arms = {a: {f"{m} {p}": mean(a, m, p) for m, p in metrics} for a in solvers}
            head = {a: v["ssim phase"] for a, v in arms.items() if v["ssim phase"] is not None}
            best = max(head, key=head.get) if head else None
            by_lib: dict[str, float] = {}
            for a, x in head.items():
                lib = lineup.solvers[a]
                by_lib[lib] = max(x, by_lib.get(lib, -math.inf))
            out.append({
                "view": view, "dose": dose, "arms": arms,
                "libraries": {a: lineup.solvers[a] for a in solvers},
                "floor": mean(refs["floor"], "ssim", "phase") if refs["floor"] else None,
                "ceiling": mean(refs["ceiling"], "ssim", "phase") if refs["ceiling"] else None,
                "best": best,
                "spread": max(head.values()) - min(head.values()) if len(head) > 1 else None,
                "independent_spread": (
                    max(by_lib.values()) - min(by_lib.values()) if len(by_lib) > 1 else None
                ),
            })
    return out


def verdict_document(rows: Sequence[Mapping[str, Any]], lineup: Lineup | None = None) -> dict:
    """The content of ``verdict.json``: the verdicts, the reference-free scores' check and,
    with two or more iterative solvers, their agreement (:func:`solver_agreement`)."""
    doc = {
        "ci_method": CI_METHOD,
        "verdicts": verdicts(rows, lineup=lineup),
        "yardstick": yardstick_check(rows, lineup=lineup),
    }
    agreement = solver_agreement(rows, lineup)
    if agreement:
        doc["solvers"] = agreement
    return doc


def aggregate(
    run_dir: Path,
    conditions: list[dict],
    jobs: list[dict],
    repeats: Sequence[Mapping[str, Any]] | None = None,
    lineup: Lineup | None = None,
) -> list[Path]:
    """Write the six aggregate files of ``RUN/analysis/`` atomically.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    conditions : list of dict
        ``{"dose", "view", "split"}`` in study order (manifest ``"conditions"``).
    jobs : list of dict
        The compare jobs in planned order (see :func:`summarise`).
    repeats : sequence of dict, optional
        The manifest's ``repeats`` (seeds per repeat), copied into the summary.
    lineup : Lineup, optional
        The arms' roles and the deltas' arms (:func:`lineup_of` the manifest).

    Returns
    -------
    list of Path
        ``metrics_long.csv``, ``metrics_summary.json``, ``metrics_summary.md``, ``deltas.json``,
        ``verdict.json``, ``highlights.txt`` (absolute paths below ``RUN/analysis``).
    """
    run_dir = Path(run_dir)
    rows = collect_rows(run_dir, conditions)
    summary = summarise(rows, jobs, repeats=repeats)
    d = deltas(summary, rows, lineup)
    analysis = run_dir / "analysis"
    texts = {
        "metrics_long.csv": _long_csv(rows),
        "metrics_summary.json": summary_json(summary),
        "metrics_summary.md": _markdown(summary),
        "deltas.json": summary_json(d),
        "verdict.json": summary_json(verdict_document(rows, lineup)),
        "highlights.txt": "\n".join(highlights_lines(d, lineup)) + "\n",
    }
    written: list[Path] = []
    for name, text in texts.items():
        path = analysis / name
        with atomic_open(path, "w") as fh:
            fh.write(text)
        written.append(path)
    return written
