"""Aggregate the per-condition comparison CSVs of a dose × view study into ``RUN/analysis/``.

Inputs are the ``comparison_metrics.csv`` files written by
:func:`ptychobench.evaluate.compare.compare`, one per condition, at
``RUN/compare/dose_{int(dose)}/{view}/{split}/comparison_metrics.csv``
(header ``model,metric,amplitude,phase,value``).

Outputs (every one written atomically, every one a pure function of the CSVs and the compare jobs'
statuses, so two runs of the same study give byte-identical files):

``analysis/metrics_long.csv``
    Every CSV row with its condition: ``dose,view,split,model,metric,amplitude,phase,value``.
``analysis/metrics_summary.json``
    Job counts, the per-condition values and the per-model aggregates over the held-out split
    (see :func:`summarise`). No wall-clock timing appears in it.
``analysis/metrics_summary.md``
    The same, as two short Markdown tables.
``analysis/deltas.json``
    PtychoPINN minus Baseline / PtyChi mean MS-SSIM and MAE (see :func:`deltas`).
``analysis/highlights.txt``
    Those deltas as exactly four fixed-format lines (see :func:`highlights_lines`).

The aggregate ("headline") numbers are taken over the conditions of one split only, the held-out
``test`` split by default: averaging train and test conditions would mix in-sample with
out-of-sample scores and flatter the trained arms.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ptychobench.data.io import atomic_open
from ptychobench.evaluate.compare import ARM_ORDER, TUPLE_METRICS

__all__ = [
    "ARMS",
    "DELTA_ARMS",
    "DELTA_METRICS",
    "LONG_COLUMNS",
    "LOWER_IS_BETTER",
    "TUPLE_METRICS",
    "aggregate",
    "collect_rows",
    "compare_dir",
    "compare_jobs_from_manifest",
    "condition_key",
    "deltas",
    "highlights_lines",
    "read_comparison_csv",
    "summarise",
    "summary_json",
]

ARMS: tuple[str, ...] = (
    "PtychoPINN",
    "Baseline",
    "PtyChi",
    "PtychoPINN+LSQML",
    "PtychoPINN+TTR",
    "Flat",
)

#: Tuple metrics where a smaller value is better ("best" is then the minimum).
LOWER_IS_BETTER = frozenset({"mae", "mse"})

#: Scalar rows never copied into the summary: wall-clock times differ between two runs of the
#: same study and would break the byte-identical ``metrics_summary.json``.
EXCLUDED_FROM_SUMMARY = frozenset({"computation_time_s", "train_s", "infer_s", "refine_s"})

#: Arms PtychoPINN is compared against in ``deltas.json`` / ``highlights.txt``, in line order.
DELTA_ARMS: tuple[str, ...] = ("Baseline", "PtyChi")
#: Metrics of ``deltas.json``; the highlights use ``{metric: decimals}``.
DELTA_METRICS: dict[str, int] = {"ms_ssim": 3, "mae": 6}
_DELTA_LABELS = {"ms_ssim": "MS-SSIM", "mae": "MAE"}
#: Width of the label column of ``highlights.txt`` (the longest label plus two spaces).
_HIGHLIGHT_LABEL_WIDTH = 35

LONG_COLUMNS: tuple[str, ...] = (
    "dose",
    "view",
    "split",
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


def compare_dir(run_dir: Path, dose: float, view: str, split: str) -> Path:
    """Directory of one condition's comparison bundle.

    Parameters
    ----------
    run_dir : Path
        The study's run directory ``RUN``.
    dose : float
        Mean photons per pattern; the directory uses ``int(dose)`` (1e3 → ``dose_1000``).
    view, split : str
        Scan view (``"dense"``, ...) and data split (``"train"`` / ``"test"``).

    Returns
    -------
    Path
        ``RUN/compare/dose_{int(dose)}/{view}/{split}``.
    """
    return Path(run_dir) / "compare" / f"dose_{int(dose)}" / view / split


def condition_key(dose: float, view: str, split: str) -> str:
    """``"dose_1000/dense/test"``: the condition's path below ``compare/``, used as a dict key."""
    return f"dose_{int(dose)}/{view}/{split}"


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
            {"id": jid, **{k: rec.get(k) for k in ("status", "dose", "view", "split", "error")}}
        )
    return out


def _unique_conditions(conditions: Iterable[Mapping[str, Any]]) -> list[tuple[float, str, str]]:
    """(dose, view, split) in first-seen order, duplicates (by directory) dropped."""
    seen: set[str] = set()
    out: list[tuple[float, str, str]] = []
    for c in conditions:
        dose, view, split = float(c["dose"]), str(c["view"]), str(c["split"])
        key = condition_key(dose, view, split)
        if key not in seen:
            seen.add(key)
            out.append((dose, view, split))
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
        Keys ``dose`` (float), ``view``, ``split``, ``model``, ``metric``, ``amplitude``,
        ``phase``, ``value`` (see :func:`read_comparison_csv`), ordered by condition then CSV line.
    """
    out: list[dict] = []
    for dose, view, split in _unique_conditions(conditions):
        path = compare_dir(Path(run_dir), dose, view, split) / CSV_NAME
        if not path.is_file():
            continue
        for row in read_comparison_csv(path):
            out.append({"dose": dose, "view": view, "split": split, **row})
    return out


# --------------------------------------------------------------------------------------------
# summarising
# --------------------------------------------------------------------------------------------


def _finite(x: Any) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def _json_num(x: Any) -> float | None:
    """A float as parsed, or None for a missing / non-finite cell (JSON has no NaN)."""
    return x if _finite(x) else None


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


def summarise(rows: list[dict], jobs: list[dict], aggregate_split: str = "test") -> dict:
    """The content of ``metrics_summary.json``.

    Parameters
    ----------
    rows : list of dict
        Output of :func:`collect_rows`.
    jobs : list of dict
        The compare jobs in planned order: ``{"id", "status", "dose", "view", "split",
        "error"?}``.
    aggregate_split : str, default "test"
        Only conditions of this split enter ``aggregate_metrics`` (the honest headline is the
        held-out split).

    Returns
    -------
    dict
        ``n_jobs``, ``n_success`` (compare jobs with status ``"success"``), ``n_failed`` (compare
        jobs not ``"success"`` plus successful/unplanned conditions whose CSV has an ``error``
        row; each condition counted once), ``n_arm_errors`` (number of (condition, arm) ``error``
        rows), ``arm_errors`` (``[{"condition", "model", "error"}]``), ``jobs``
        (``[{"id", "dose", "view", "split", "status"}]``), ``aggregate_split``,
        ``aggregate_conditions`` (condition keys that have rows in that split),
        ``aggregate_metrics`` (``{model: {metric: {"mean_amplitude", "mean_phase",
        "best_amplitude", "best_phase", "n", "n_amplitude", "n_phase"}}}``, tuple metrics only;
        best = min for mae/mse, max otherwise; missing/NaN cells skipped; ``n`` = conditions
        with at least one finite part) and ``by_condition`` (``{"dose_1000/dense/test": {model:
        {metric: {"amplitude", "phase"} | {"value"}}}}``). ``computation_time_s`` is left out
        everywhere. Floats are exactly the parsed CSV values (means aside).
    """
    job_list = [
        {
            "id": str(j["id"]),
            "dose": float(j["dose"]),
            "view": str(j["view"]),
            "split": str(j["split"]),
            "status": str(j["status"]),
        }
        for j in jobs
    ]
    not_ok = [j for j in job_list if j["status"] != "success"]
    failed_keys = {condition_key(j["dose"], j["view"], j["split"]) for j in not_ok}
    n_failed_jobs = len(not_ok)

    by_condition: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    arm_errors: list[dict[str, str]] = []
    # per model/metric: lists of finite amplitude/phase values and the number of conditions
    acc: dict[str, dict[str, dict[str, Any]]] = {}
    agg_conditions: list[str] = []
    for r in rows:
        key = condition_key(r["dose"], r["view"], r["split"])
        model, metric = r["model"], r["metric"]
        cond = by_condition.setdefault(key, {})
        if metric == "error":
            cond.setdefault(model, {})["error"] = {"value": str(r["value"])}
            arm_errors.append({"condition": key, "model": model, "error": str(r["value"])})
            continue
        if metric in EXCLUDED_FROM_SUMMARY:
            continue
        if metric in TUPLE_METRICS:
            cell = {"amplitude": _json_num(r["amplitude"]), "phase": _json_num(r["phase"])}
        else:
            cell = {"value": _json_num(r["value"])}
        cond.setdefault(model, {})[metric] = cell
        if r["split"] != aggregate_split or metric not in TUPLE_METRICS:
            continue
        if key not in agg_conditions:
            agg_conditions.append(key)
        a = acc.setdefault(model, {}).setdefault(metric, {"amp": [], "ph": [], "n": 0})
        if _finite(r["amplitude"]):
            a["amp"].append(r["amplitude"])
        if _finite(r["phase"]):
            a["ph"].append(r["phase"])
        if _finite(r["amplitude"]) or _finite(r["phase"]):
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
    n_failed = n_failed_jobs + len(error_keys - failed_keys)
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


def deltas(summary: dict) -> dict:
    """PtychoPINN minus Baseline / PtyChi aggregate means (the content of ``deltas.json``).

    Parameters
    ----------
    summary : dict
        Output of :func:`summarise`.

    Returns
    -------
    dict
        ``{"vs_Baseline": {"ms_ssim": {"phase", "amplitude"}, "mae": {...}}, "vs_PtyChi": {...},
        "aggregate_split": "test", "definition": "..."}``. A delta is None where either mean is
        missing. Positive is better for ms_ssim, negative is better for mae.
    """
    split = summary.get("aggregate_split", "test")
    out: dict[str, Any] = {
        "aggregate_split": split,
        "definition": f"PtychoPINN mean minus other arm mean over the {split}-split conditions",
    }
    for other in DELTA_ARMS:
        block: dict[str, dict[str, float | None]] = {}
        for metric in DELTA_METRICS:
            block[metric] = {}
            for part in ("phase", "amplitude"):
                mine = _mean(summary, "PtychoPINN", metric, part)
                theirs = _mean(summary, other, metric, part)
                block[metric][part] = None if mine is None or theirs is None else mine - theirs
        out[f"vs_{other}"] = block
    return out


def _signed(x: Any, decimals: int) -> str:
    if not _finite(x):
        return "n/a"
    return f"{x:+.{decimals}f}"


def highlights_lines(d: dict) -> list[str]:
    """Exactly four lines: MS-SSIM and MAE deltas vs Baseline, then vs PtyChi; phase first.

    Parameters
    ----------
    d : dict
        Output of :func:`deltas`.

    Returns
    -------
    list of str
        e.g. ``"MS-SSIM Δ (PtychoPINN - Baseline)  : phase +0.015  amplitude +0.010"``;
        MS-SSIM with 3 decimals, MAE with 6, signed; a missing delta reads ``n/a``. No trailing
        newlines.
    """
    lines: list[str] = []
    for other in DELTA_ARMS:
        block = d.get(f"vs_{other}", {}) or {}
        for metric, decimals in DELTA_METRICS.items():
            cell = block.get(metric, {}) or {}
            label = f"{_DELTA_LABELS[metric]} Δ (PtychoPINN - {other})".ljust(
                _HIGHLIGHT_LABEL_WIDTH
            )
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


def aggregate(run_dir: Path, conditions: list[dict], jobs: list[dict]) -> list[Path]:
    """Write the five aggregate files of ``RUN/analysis/`` atomically.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    conditions : list of dict
        ``{"dose", "view", "split"}`` in study order (manifest ``"conditions"``).
    jobs : list of dict
        The compare jobs in planned order (see :func:`summarise`).

    Returns
    -------
    list of Path
        ``metrics_long.csv``, ``metrics_summary.json``, ``metrics_summary.md``, ``deltas.json``,
        ``highlights.txt`` (absolute paths below ``RUN/analysis``).
    """
    run_dir = Path(run_dir)
    rows = collect_rows(run_dir, conditions)
    summary = summarise(rows, jobs)
    d = deltas(summary)
    analysis = run_dir / "analysis"
    texts = {
        "metrics_long.csv": _long_csv(rows),
        "metrics_summary.json": summary_json(summary),
        "metrics_summary.md": _markdown(summary),
        "deltas.json": summary_json(d),
        "highlights.txt": "\n".join(highlights_lines(d)) + "\n",
    }
    written: list[Path] = []
    for name, text in texts.items():
        path = analysis / name
        with atomic_open(path, "w") as fh:
            fh.write(text)
        written.append(path)
    return written
