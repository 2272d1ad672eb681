"""The study report: dose-response plot, per-dose montages and one self-contained HTML page.

:func:`write_report` reads a finished (or partly failed) study run directory::

    RUN/study.toml  RUN/manifest.json  RUN/logs/<job>.log
    RUN/data/dose_<D>/<view>/overlap_<split>.json
    RUN/compare/dose_<D>/<view>/<split>/{comparison_metrics.csv, reconstructions.npz}
    RUN/analysis/{metrics_long.csv, metrics_summary.json, highlights.txt, deltas.json}

and writes ``RUN/analysis/headline_dose_response.png``, ``RUN/analysis/dose_response.png``,
``RUN/analysis/montage_dose_<D>.png`` (one per dose), ``RUN/analysis/quality_vs_seconds.png`` and
``RUN/analysis/report.html``.

The page is rendered from the Jinja2 template ``ptychobench/study/templates/report.html.j2``
(autoescaping on), its sections by the macros of ``templates/_macros.html.j2``; this module only
prepares their data (plain dicts and lists of formatted strings and numbers). It opens with the
verdict (one sentence per view, the verdict grid ``<table id="verdict">`` with a metric
selector, the test-split dose response with 95 % bands over repeats); the design, overlap
tables, per-condition tables, montages, timings and environment follow, collapsed in
``<details>``. It has no external resources (PNGs are embedded as ``data:`` URIs, CSS and a few
lines of JS are inline) and nothing time-dependent, so regenerating it from the same inputs gives
identical bytes.

Verifier contract: every metric number taken from ``metrics_long.csv`` into the ``tables``
section is a ``<td>`` carrying ``data-condition="dose_<D>/<view>/<split>"``, ``data-model``,
``data-metric``, ``data-part`` (``phase``, ``amplitude`` or ``value``) and ``data-value`` =
``repr(float)`` of the mean over repeats of the parsed CSV numbers (the CSV float itself with one
repeat). Every verdict-grid cell carries ``data-view``, ``data-dose`` (``repr(float)``),
``data-metric``, ``data-part``, ``data-arm`` (the winner or ``tie``) and ``data-margin``
(``repr(float)`` of the paired margin, empty when there is none).
"""

from __future__ import annotations

import base64
import contextvars
import csv
import dataclasses
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptychobench.arms.registry import BUILTIN, DISPLAY_ORDER
from ptychobench.data.io import atomic_open
from ptychobench.study.aggregate import (
    LOWER_IS_BETTER,
    UNTRUSTED,
    VERDICT_METRICS,
    Lineup,
    interval,
    lineup_of,
    mean_rows,
    solver_agreement,
    verdicts,
    yardstick_check,
)

__all__ = ["dose_response_plot", "headline_plot", "montage", "verdict_view", "write_report"]

#: Colours of arms that bring none (plugins), in order of first appearance.
SPARE_COLORS = ("C5", "C6", "C7", "C8", "C9", "C3", "C4")


@dataclasses.dataclass(frozen=True)
class _Cast:
    """Who the run's arms are, for the figures and tables: each arm's role and colour (read
    from the manifest's ``arms``; an arm it does not list has its registered role) and the
    deltas' subject. Methods are drawn solid and can be "best"; references dashed, never."""

    lineup: Lineup = dataclasses.field(default_factory=Lineup)
    colors: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> _Cast:
        arms = manifest.get("arms") if isinstance(manifest.get("arms"), dict) else {}
        colors = {n: a["color"] for n, a in arms.items() if isinstance(a, dict) and a.get("color")}
        if not arms:  # a run from before arms were recorded: the built-ins' own
            colors = {n: c for n, c in describe_builtin_colors().items()}
        spare = iter(SPARE_COLORS * 4)
        for n in arms:
            colors.setdefault(n, next(spare))
        return cls(lineup_of(manifest), colors)

    def method(self, arm: str) -> bool:
        return self.lineup.role(arm) == "method"

    def color(self, arm: str) -> str | None:
        return self.colors.get(arm) or describe_builtin_colors().get(arm)

    def floor(self, names: Iterable[str]) -> str | None:
        return self.lineup.reference("floor", names)


def describe_builtin_colors() -> dict[str, str]:
    """The built-in arms' plot colours (``{name: matplotlib colour}``)."""
    out = {}
    for name, b in BUILTIN.items():
        c = b.color or b.cls.color
        if c:
            out[name] = c
    return out


_CAST: contextvars.ContextVar[_Cast] = contextvars.ContextVar("ptychobench_report_cast")


def _cast() -> _Cast:
    """The cast of the run being reported (set by :func:`write_report`; the built-ins else)."""
    try:
        return _CAST.get()
    except LookupError:
        return _Cast()

#: Time budgets (seconds) of the "best arm within" table.
COST_BUDGETS = (1.0, 10.0, 100.0)
#: Cost rows of the per-condition cost table, in column order.
COST_METRICS = ("computation_time_s", "train_s", "infer_s", "refine_s")
CURVE_CSV = "convergence.csv"

#: (metric, part, axis label) rows of the dose-response figure.
DOSE_RESPONSE_ROWS = (
    ("ssim", "phase", "phase SSIM"),
    ("ms_ssim", "phase", "phase MS-SSIM"),
    ("frc50", "phase", "phase FRC50"),
    ("ssim", "amplitude", "amplitude SSIM"),
)
#: Metrics given one table each in the ``tables`` section; nrmse is a scalar (``value``) row.
TABLE_METRICS = (
    "ssim",
    "ms_ssim",
    "mae",
    "frc50",
    "nrmse",
    "heldout_nll_rel",
    "halfscan_frc_halfbit",
    "halfscan_frc1over7",
)
SCALAR_TABLE_METRICS = ("nrmse", "heldout_nll_rel")
#: Direction of "better" per table metric (used only to highlight the best arm of a row).
HIGHER_IS_BETTER = {
    "ssim": True,
    "ms_ssim": True,
    "frc50": True,
    "mae": False,
    "nrmse": False,
    "heldout_nll_rel": False,
    "halfscan_frc_halfbit": True,
    "halfscan_frc1over7": True,
}
SUMMARY_METRICS = ("ssim", "ms_ssim", "mae", "frc50")
LOG_TAIL_LINES = 20

# PNG text chunks: matplotlib writes its version as "Software"; dropping it keeps the bytes a
# function of the data only (Agg rendering itself is deterministic).
_PNG_METADATA: dict[str, str | None] = {"Software": None}
_PNG_DPI = 80


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _esc(x: Any) -> str:
    """HTML-escape any value's ``str`` (quotes too, so it is safe inside attributes)."""
    return html.escape(str(x), quote=True)


def _dose_label(dose: float) -> str:
    return f"dose_{int(float(dose))}"


def _cond_key(dose: float, view: str, split: str) -> str:
    return f"{_dose_label(dose)}/{view}/{split}"


def _ordered_arms(names: Iterable[str]) -> list[str]:
    names = set(names)
    first = [a for a in DISPLAY_ORDER if a in names]
    return first + sorted(n for n in names if n not in DISPLAY_ORDER)


def _fmt(x: Any, digits: int = 4) -> str:
    """Short display text for a number (the exact number goes into ``data-value``)."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        return f"{float(x):.{digits}g}"
    return str(x)


def _parse_float(s: str | None) -> float | None:
    if s is None:
        return None
    s = s.strip()
    if not s:
        return None
    try:
        return float(s)
    except ValueError:
        return None


def _read_json(path: Path) -> Any:
    """Parsed JSON, or None when the file is missing or unreadable (the report never crashes)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _read_metrics_long(path: Path) -> list[dict[str, Any]]:
    """Parse ``metrics_long.csv`` (``dose,view,split,repeat,model,metric,amplitude,phase,value``;
    a file without the ``repeat`` column reads as repeat 0).

    Kept local (not imported from the aggregate module) so the report only depends on the file
    format. Numbers become floats, empty cells None; ``value`` stays a string where it is not a
    number (the message of an ``error`` row).
    """
    rows: list[dict[str, Any]] = []
    try:
        fh = open(path, encoding="utf-8", newline="")
    except OSError:
        return rows
    with fh:
        for rec in csv.DictReader(fh):
            dose = _parse_float(rec.get("dose"))
            if dose is None:
                continue
            raw_value = rec.get("value") or ""
            value: float | str | None = _parse_float(raw_value)
            if value is None and raw_value.strip():
                value = raw_value
            repeat = _parse_float(rec.get("repeat"))
            rows.append(
                {
                    "dose": dose,
                    "view": rec.get("view") or "",
                    "split": rec.get("split") or "",
                    "repeat": int(repeat) if repeat is not None else 0,
                    "model": rec.get("model") or "",
                    "metric": rec.get("metric") or "",
                    "amplitude": _parse_float(rec.get("amplitude")),
                    "phase": _parse_float(rec.get("phase")),
                    "value": value,
                }
            )
    return rows


def _read_compare_csv(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``comparison_metrics.csv`` of one compare dir as ``{model: {metric: {part: x}}}``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        fh = open(path, encoding="utf-8", newline="")
    except OSError:
        return out
    with fh:
        for rec in csv.DictReader(fh):
            m = out.setdefault(rec.get("model") or "", {})
            m[rec.get("metric") or ""] = {
                "amplitude": _parse_float(rec.get("amplitude")),
                "phase": _parse_float(rec.get("phase")),
                "value": rec.get("value") or "",
            }
    return out


def _conditions_from(conditions: Sequence[dict], rows: Sequence[dict]) -> list[tuple]:
    """Unique ``(dose, view, split)`` in manifest order, then any extra CSV condition, sorted."""
    seen: dict[str, tuple] = {}
    for c in conditions:
        t = (float(c["dose"]), str(c["view"]), str(c["split"]))
        seen.setdefault(_cond_key(*t), t)
    extra = {}
    for r in rows:
        t = (float(r["dose"]), r["view"], r["split"])
        k = _cond_key(*t)
        if k not in seen:
            extra.setdefault(k, t)
    return list(seen.values()) + [extra[k] for k in sorted(extra, key=lambda k: extra[k])]


def _save_png(fig: Any, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=_PNG_DPI, metadata=_PNG_METADATA)


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------


def _series(rows: Sequence[dict], metric_rows) -> dict[tuple, dict[str, dict[float, dict]]]:
    """``{(view, split, metric, part): {model: {dose: interval over repeats}}}``."""
    values: dict[tuple, dict[str, dict[float, list[float]]]] = {}
    for r in rows:
        for metric, part, _ in metric_rows:
            if r["metric"] != metric:
                continue
            y = r.get(part)
            if isinstance(y, float) and math.isfinite(y):
                key = (r["view"], r["split"], metric, part)
                per = values.setdefault(key, {}).setdefault(r["model"], {})
                per.setdefault(float(r["dose"]), []).append(y)
    return {
        k: {m: {d: interval(v) for d, v in doses.items()} for m, doses in by_model.items()}
        for k, by_model in values.items()
    }


def _dose_response(
    rows: Sequence[dict],
    path: Path,
    pairs: list[tuple[str, str]],
    metric_rows: Sequence[tuple[str, str, str]],
    panel: tuple[float, float],
) -> Any:
    """One panel per (metric row, (view, split) column); mean line and 95 % band per arm."""
    from matplotlib.figure import Figure

    if not pairs:
        pairs = [("(none)", "(none)")]
    series = _series(rows, metric_rows)
    n_rows, n_cols = len(metric_rows), len(pairs)
    fig = Figure(
        figsize=(panel[0] * n_cols + 0.4, panel[1] * n_rows + 0.6), layout="constrained"
    )
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    handles: dict[str, Any] = {}
    for c, (view, split) in enumerate(pairs):
        for r_i, (metric, part, label) in enumerate(metric_rows):
            ax = axes[r_i, c]
            data = series.get((view, split, metric, part), {})
            for arm in _ordered_arms(data):
                pts = sorted(data[arm].items())
                xs = [p[0] for p in pts]
                ys = [p[1]["mean"] for p in pts]
                solid = _cast().method(arm)
                color = _cast().color(arm)
                (line,) = ax.plot(
                    xs,
                    ys,
                    linestyle="-" if solid else "--",
                    marker="o" if solid else None,
                    markersize=4,
                    linewidth=1.5 if solid else 1.2,
                    color=color,
                    label=arm,
                )
                band = [(x, p["ci95_low"], p["ci95_high"]) for x, p in pts]
                band = [b for b in band if b[1] is not None]
                if band:
                    ax.fill_between(
                        [b[0] for b in band],
                        [b[1] for b in band],
                        [b[2] for b in band],
                        color=color,
                        alpha=0.18,
                        linewidth=0,
                    )
                handles.setdefault(arm, line)
            if not data:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.set_xscale("log")
            ax.grid(True, which="major", alpha=0.3)
            ax.tick_params(labelsize=7)
            if r_i == 0:
                ax.set_title(f"{view} / {split}", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r_i == n_rows - 1:
                ax.set_xlabel("dose (photons / pattern)", fontsize=8)
    if handles:
        arms = _ordered_arms(handles)
        fig.legend(
            [handles[a] for a in arms],
            arms,
            loc="outside upper center",
            ncol=min(len(arms), 3 if n_cols < 3 else 6),
            fontsize=8,
        )
    _save_png(fig, Path(path))
    return fig


def _pairs(conditions: Sequence[dict], rows: Sequence[dict], split: str | None = None) -> list:
    pairs: list[tuple[str, str]] = []
    for _, view, sp in _conditions_from(conditions, rows):
        if (view, sp) not in pairs and (split is None or sp == split):
            pairs.append((view, sp))
    return pairs


def dose_response_plot(rows: list[dict], path: Path, conditions: list[dict]) -> Any:
    """Metric vs dose (log x) per arm: one column per (view, split), one row per metric.

    Rows: phase SSIM, phase MS-SSIM, phase FRC50, amplitude SSIM. PtychoPINN, Baseline and
    PtyChi are solid lines with markers; the Flat floor (and any other arm) is dashed. Each line
    is the mean over repeats, with a shaded 95 % Student-t band where there are two or more. A
    dose where an arm has no finite number is left out of that arm's line.

    Parameters
    ----------
    rows : list of dict
        Parsed ``metrics_long.csv`` rows (keys ``dose, view, split, repeat, model, metric,
        amplitude, phase, value``), every repeat.
    path : Path
        Destination PNG (written atomically; deterministic bytes).
    conditions : list of dict
        ``{"dose", "view", "split"}`` entries; their (view, split) pairs, in order of first
        appearance, define the columns (pairs present only in ``rows`` are appended).

    Returns
    -------
    matplotlib.figure.Figure
        The (already saved) figure, for inspection: ``len(fig.axes)`` is
        ``len(DOSE_RESPONSE_ROWS) * n_columns`` (one panel per (view, split) and metric).
    """
    return _dose_response(
        rows, path, _pairs(conditions, rows), DOSE_RESPONSE_ROWS, panel=(3.2, 2.4)
    )


def headline_plot(
    rows: list[dict],
    path: Path,
    conditions: list[dict],
    metric: tuple[str, str, str] = VERDICT_METRICS[0],
) -> Any:
    """The first screen's figure: the test-split headline ``metric`` (phase SSIM) vs dose, one
    panel per view, with the 95 % band over repeats (see :func:`dose_response_plot`)."""
    return _dose_response(rows, path, _pairs(conditions, rows, "test"), (metric,), panel=(3.0, 2.3))


def _read_curves(run_dir: Path, key: str) -> dict[str, list[tuple[float, float, int]]]:
    """``{arm: [(seconds, phase SSIM, epoch), ...]}`` from a condition's ``convergence.csv``."""
    text = _read_text(run_dir / "compare" / key / CURVE_CSV)
    out: dict[str, list[tuple[float, float, int]]] = {}
    if not text:
        return out
    for r in csv.DictReader(io.StringIO(text)):
        sec, ph = _parse_float(r.get("seconds")), _parse_float(r.get("phase_ssim"))
        if sec is not None and ph is not None and math.isfinite(sec) and math.isfinite(ph):
            out.setdefault(str(r["model"]), []).append((sec, ph, int(float(r["epoch"]))))
    return out


def cost_points(rows: list[dict], run_dir: Path, key: str) -> list[tuple[str, float, float]]:
    """Every (arm label, seconds, phase SSIM) a condition offers: each arm's final result and
    each convergence snapshot (labelled ``arm @ N epochs``). Flat is free and left out."""
    index = {
        (r["model"], r["metric"]): r
        for r in rows
        if _cond_key(r["dose"], r["view"], r["split"]) == key
    }
    pts = []
    for arm in _ordered_arms({m for m, _ in index}):
        if not _cast().method(arm):  # the references are levels, not costs
            continue
        sec = (index.get((arm, "computation_time_s")) or {}).get("value")
        ph = (index.get((arm, "ssim")) or {}).get("phase")
        if isinstance(sec, float) and isinstance(ph, float) and math.isfinite(sec + ph):
            pts.append((arm, sec, ph))
    for arm, curve in _read_curves(run_dir, key).items():
        pts += [(f"{arm} @ {e} epochs", sec, ph) for sec, ph, e in curve]
    return pts


def best_within(
    points: list[tuple[str, float, float]], budget_s: float
) -> tuple[str, float, float] | None:
    """The (arm, seconds, phase SSIM) with the best phase SSIM among ``points`` that cost at
    most ``budget_s`` (ties: the cheaper, then the first); None when none fits."""
    within = [p for p in points if p[1] <= budget_s]
    return max(within, key=lambda p: (p[2], -p[1])) if within else None


def cost_plot(run_dir: Path, rows: list[dict], conditions: list[dict], path: Path) -> Any:
    """Phase SSIM vs seconds (log) per dose × view on the test split: a marker per arm (its
    ``computation_time_s``), the LSQML convergence curves as lines, Flat as a dashed level."""
    from matplotlib.figure import Figure

    conds = [c for c in _conditions_from(conditions, rows) if c[2] == "test"] or [
        (0.0, "(none)", "test")
    ]
    doses = sorted({c[0] for c in conds})
    views = list(dict.fromkeys(c[1] for c in conds))
    fig = Figure(figsize=(3.2 * len(views) + 0.4, 2.5 * len(doses) + 0.6), layout="constrained")
    axes = fig.subplots(len(doses), len(views), squeeze=False)
    handles: dict[str, Any] = {}
    for i, dose in enumerate(doses):
        for j, view in enumerate(views):
            ax = axes[i, j]
            key = _cond_key(dose, view, "test")
            sub = [r for r in rows if _cond_key(r["dose"], r["view"], r["split"]) == key]
            for arm, curve in _read_curves(run_dir, key).items():
                (h,) = ax.plot(
                    [c[0] for c in curve],
                    [c[1] for c in curve],
                    "-",
                    color=_cast().color(arm),
                    linewidth=1.0,
                    alpha=0.7,
                )
            for arm, sec, ph in cost_points(rows, run_dir, key):
                if "@" in arm:
                    continue
                (h,) = ax.plot([sec], [ph], "o", color=_cast().color(arm), markersize=6)
                handles.setdefault(arm, h)
            models = _ordered_arms({r["model"] for r in sub})
            for ref in [m for m in models if not _cast().method(m)]:
                level = [
                    r.get("phase") for r in sub if r["model"] == ref and r["metric"] == "ssim"
                ]
                if level and isinstance(level[0], float):
                    h = ax.axhline(level[0], color=_cast().color(ref), linestyle="--", linewidth=1)
                    handles.setdefault(ref, h)
            if ax.lines:
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overprint
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.grid(True, which="major", alpha=0.3)
            ax.tick_params(labelsize=7)
            ax.set_title(f"{_dose_label(dose)} / {view}", fontsize=9)
            if j == 0:
                ax.set_ylabel("phase SSIM", fontsize=8)
            if i == len(doses) - 1:
                ax.set_xlabel("seconds (inference + refinement)", fontsize=8)
    if handles:
        arms = _ordered_arms(handles)
        fig.legend(
            [handles[a] for a in arms], arms, loc="outside upper center", ncol=len(arms), fontsize=8
        )
    _save_png(fig, Path(path))
    return fig


def _cost_data(run_dir: Path, rows: list[dict], conds: list[tuple], png: Path) -> dict:
    """The cost section (macro ``cost``): budget winners and seconds per arm, test split."""
    keys = [(d, v, _cond_key(d, v, s)) for d, v, s in conds if s == "test"]
    if not keys:
        return {"budget_rows": None}
    budget_rows = []
    for dose, view, key in keys:
        pts = cost_points(rows, run_dir, key)
        cells = [_cell(int(float(dose))), _text_cell(view)]
        for b in COST_BUDGETS:
            best = best_within(pts, b)
            if best is None:
                cells.append(_na_cell())
                continue
            arm, sec, ph = best
            attrs = [
                ("data-condition", key),
                ("data-budget", f"{b:g}"),
                ("data-arm", arm),
                ("data-value", repr(float(ph))),
            ]
            text = f"{arm}: {_fmt(ph, 3)} ({_fmt(sec, 3)} s)"
            cells.append(_cell_dict(text, "text", attrs))
        budget_rows.append(cells)
    index = {
        (_cond_key(r["dose"], r["view"], r["split"]), r["model"], r["metric"]): r for r in rows
    }
    cost_rows = []
    for dose, view, key in keys:
        arms = _ordered_arms({m for k, m, _ in index if k == key})
        for arm in arms:
            cells = [_cell(int(float(dose))), _text_cell(view), _text_cell(arm)]
            r = index.get((key, arm, "ssim"))
            cells.append(_cell(r.get("phase") if r else None))  # its data cell is in the tables
            for metric, part in tuple((m, "value") for m in COST_METRICS):
                r = index.get((key, arm, metric))
                v = r.get(part) if r else None
                if isinstance(v, float):
                    cells.append(_value_cell(v, "", key, arm, metric, part))
                else:
                    cells.append(_na_cell())
            cost_rows.append(cells)
    return {
        "figure": _figure(png, "quality vs seconds"),
        "budget_header": ["dose", "view"] + [f"within {b:g} s" for b in COST_BUDGETS],
        "budget_rows": budget_rows,
        "cost_header": [
            "dose",
            "view",
            "arm",
            "phase SSIM",
            "computation",
            "train (amortised)",
            "infer",
            "refine",
        ],
        "cost_rows": cost_rows,
    }


def _load_recon(npz_path: Path) -> tuple[dict[str, np.ndarray], str | None]:
    """``{"truth": ..., arm: aligned}`` from a ``reconstructions.npz``, or ({}, why-not)."""
    if not npz_path.is_file():
        return {}, "comparison missing"
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            out = {
                k[: -len("_aligned")]: np.asarray(z[k]) for k in z.files if k.endswith("_aligned")
            }
            if "truth_crop" in z.files:
                out["truth"] = np.asarray(z["truth_crop"])
    except (OSError, ValueError) as exc:
        return {}, f"unreadable reconstructions.npz: {exc}"
    return out, None


def montage(
    run_dir: Path, dose: float, conditions: list[dict], path: Path, *, amplitude: bool = True
) -> Any:
    """One figure for one dose: per (view, split), the truth phase then each arm's aligned phase.

    Each condition gets a phase row (and, with ``amplitude``, an amplitude row) sharing one set
    of colour limits (the truth's range, so arms are judged on the truth's scale). Panel titles
    name the arm and its phase (or amplitude) SSIM from the condition's
    ``comparison_metrics.csv``. A condition with no ``reconstructions.npz`` (a failed job) gets
    a row saying so instead of images.

    Parameters
    ----------
    run_dir : Path
        Study run directory (reads ``compare/dose_<D>/<view>/<split>/``).
    dose : float
    conditions : list of dict
        ``{"dose", "view", "split"}``; only those with this dose are drawn, in order.
    path : Path
        Destination PNG (written atomically; deterministic bytes).
    amplitude : bool, default True
        Also draw an amplitude row per condition.

    Returns
    -------
    matplotlib.figure.Figure
        The (already saved) figure.
    """
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    label = _dose_label(dose)
    conds = [
        (str(c["view"]), str(c["split"])) for c in conditions if _dose_label(c["dose"]) == label
    ]
    conds = list(dict.fromkeys(conds))
    loaded = []
    for view, split in conds:
        d = run_dir / "compare" / label / view / split
        imgs, why = _load_recon(d / "reconstructions.npz")
        loaded.append((view, split, imgs, why, _read_compare_csv(d / "comparison_metrics.csv")))
    arms = _ordered_arms({k for _, _, imgs, _, _ in loaded for k in imgs if k != "truth"})
    cols = ["truth"] + arms
    parts = [("phase", np.angle, "viridis")] + (
        [("amplitude", np.abs, "gray")] if amplitude else []
    )
    # A missing comparison needs one text row, not one per part.
    n_rows = max(1, sum(len(parts) if imgs else 1 for _, _, imgs, _, _ in loaded))
    fig = Figure(figsize=(2.1 * len(cols) + 0.8, 2.1 * n_rows + 0.5), layout="constrained")
    axes = fig.subplots(n_rows, len(cols), squeeze=False)
    fig.suptitle(f"{label}: aligned reconstructions vs truth", fontsize=10)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if not loaded:
        axes[0, 0].text(0.5, 0.5, "no conditions", ha="center", va="center")
    r = -1
    for view, split, imgs, why, scores in loaded:
        if not imgs:
            r += 1
            axes[r, 0].text(
                0.05,
                0.5,
                f"{view}/{split}: {why}",
                fontsize=8,
                va="center",
                transform=axes[r, 0].transAxes,
            )
            for ax in axes[r]:
                ax.set_axis_off()
            continue
        for part, fn, cmap in parts:
            r += 1
            # colour limits from the truth's finite values (all images if there is no truth)
            src = [imgs["truth"]] if "truth" in imgs else list(imgs.values())
            ref = np.concatenate([fn(v).ravel() for v in src])
            ref = ref[np.isfinite(ref)]
            vmin, vmax = (float(ref.min()), float(ref.max())) if ref.size else (0.0, 1.0)
            if vmax <= vmin:  # a constant truth: give imshow a non-empty range
                vmin, vmax = vmin - 0.5, vmax + 0.5
            im = None
            for c, name in enumerate(cols):
                ax = axes[r, c]
                if name not in imgs:
                    ax.text(
                        0.5,
                        0.5,
                        "failed" if name != "truth" else "no truth",
                        ha="center",
                        va="center",
                        transform=ax.transAxes,
                        fontsize=8,
                    )
                    ax.set_title(name, fontsize=8)
                    continue
                im = ax.imshow(fn(imgs[name]), vmin=vmin, vmax=vmax, cmap=cmap)
                if name == "truth":
                    title = f"{view}/{split}\ntruth {part}"
                else:
                    s = scores.get(name, {}).get("ssim", {}).get(part)
                    title = f"{name}\n{part} SSIM {_fmt(s, 3)}"
                ax.set_title(title, fontsize=8)
            if im is not None:
                fig.colorbar(im, ax=axes[r, -1], shrink=0.8)
    _save_png(fig, Path(path))
    return fig


# --------------------------------------------------------------------------------------------
# data for the page's sections (rendered by the macros in templates/_macros.html.j2)
# --------------------------------------------------------------------------------------------


def _cell_dict(
    text: Any, cls: str = "", attrs: Sequence[tuple[str, Any]] = (), tag: str = "td"
) -> dict[str, Any]:
    """One table cell for the ``cell`` macro: its tag, class, ordered attributes and text."""
    return {"tag": tag, "cls": cls, "attrs": list(attrs), "text": text}


def _cell(x: Any, cls: str = "") -> dict[str, Any]:
    """A number cell: the short display text of ``x`` (see :func:`_fmt`)."""
    return _cell_dict(_fmt(x), cls)


def _text_cell(x: Any) -> dict[str, Any]:
    return _cell_dict(x, "text")


def _na_cell(text: str = "—", attrs: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    return _cell_dict(text, "na", attrs)


def _value_cell(v: float, cls: str, key: str, model: str, metric: str, part: str) -> dict:
    """A metric cell in the verifier's format (``data-value`` = ``repr(float)``)."""
    attrs = [
        ("data-condition", key),
        ("data-model", model),
        ("data-metric", metric),
        ("data-part", part),
        ("data-value", repr(float(v))),
    ]
    return _cell_dict(_fmt(v), cls, attrs)


def _figure(png: Path, alt: str) -> dict[str, Any]:
    """An embedded PNG for the ``figure`` macro (``data`` None: the file is missing)."""
    try:
        data: str | None = base64.b64encode(png.read_bytes()).decode("ascii")
    except OSError:
        data = None
    return {"data": data, "name": png.name, "alt": alt}


def _design_key(run_dir: Path, key: str) -> str | None:
    """A top-level string of study.toml (``name``, ``description``), if it parses."""
    import tomllib

    text = _read_text(run_dir / "study.toml")
    try:
        value = tomllib.loads(text).get(key) if text is not None else None
    except tomllib.TOMLDecodeError:
        return None
    return str(value) if value else None


def _study_name(run_dir: Path) -> str | None:
    """The design's ``name`` from study.toml, if it parses (the page title only)."""
    return _design_key(run_dir, "name")


def _design_data(run_dir: Path) -> dict:
    return {"text": _read_text(run_dir / "study.toml")}


def _overlap_data(run_dir: Path, conds: list[tuple]) -> dict:
    header = [
        "dose",
        "view",
        "split",
        "gridsize",
        "D",
        "n_positions",
        "n_unique_positions",
        "n_groups",
        "metric_1_group",
        "metric_2_neighbors",
        "metric_3_centres",
    ]
    rows = []
    for dose, view, split in conds:
        rep = _read_json(run_dir / "data" / _dose_label(dose) / view / f"overlap_{split}.json")
        cells = [_cell(int(float(dose))), _text_cell(view), _text_cell(split)]
        if not isinstance(rep, dict):
            colspan = ("colspan", len(header) - 3)
            cells.append(_na_cell("overlap report missing", [colspan]))
        else:
            for k in header[3:]:
                v = rep.get(k)
                if k == "metric_1_group" and v is None:
                    cells.append(_na_cell("n/a (gridsize 1)"))
                else:
                    cells.append(_cell(v))
        rows.append(cells)
    return {"header": header, "rows": rows}


def _summary_data(run_dir: Path, summary: Any) -> dict:
    hl = _read_text(run_dir / "analysis" / "highlights.txt")
    out: dict[str, Any] = {
        "highlights": None if hl is None else [ln for ln in hl.splitlines() if ln.strip()],
        "header": None,
        "paired": _paired_data(_read_json(run_dir / "analysis" / "deltas.json")),
    }
    agg = summary.get("aggregate_metrics") if isinstance(summary, dict) else None
    if isinstance(agg, dict) and agg:
        header = ["model"] + [f"{m} {p}" for m in SUMMARY_METRICS for p in ("phase", "amplitude")]
        header.append("n")
        models = _ordered_arms(agg)
        best: dict[tuple[str, str], float] = {}
        for m in SUMMARY_METRICS:
            for p in ("phase", "amplitude"):
                vals = [
                    agg[a].get(m, {}).get(f"mean_{p}")
                    for a in models
                    if _cast().method(a) and isinstance(agg[a], dict)
                ]
                vals = [v for v in vals if isinstance(v, int | float) and math.isfinite(v)]
                if vals:
                    best[(m, p)] = max(vals) if HIGHER_IS_BETTER[m] else min(vals)
        rows = []
        for a in models:
            entry = agg[a] if isinstance(agg[a], dict) else {}
            cells = [_text_cell(a)]
            ns = set()
            for m in SUMMARY_METRICS:
                st = entry.get(m) if isinstance(entry.get(m), dict) else {}
                if st.get("n") is not None:
                    ns.add(st.get("n"))
                for p in ("phase", "amplitude"):
                    v = st.get(f"mean_{p}")
                    cls = "best" if _cast().method(a) and best.get((m, p)) == v else ""
                    cells.append(_cell(v, cls))
            cells.append(_cell(", ".join(str(n) for n in sorted(ns, key=str)) or None))
            rows.append(cells)
        out.update(
            split=summary.get("aggregate_split", "test"),
            header=header,
            rows=rows,
            resolution=_resolution_data(run_dir, agg, models),
        )
    return out


def object_pixel_m(run_dir: Path) -> float | None:
    """The run's object pixel size (m) as its comparisons recorded it (None: pixels only)."""
    for path in sorted((run_dir / "compare").rglob("metrics.json")):
        doc = _read_json(path)
        settings = doc.get("settings", {}) if isinstance(doc, dict) else {}
        value = settings.get("object_pixel_size_m")
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return None


def _resolution_data(run_dir: Path, agg: dict, models: list[str]) -> dict:
    """FRC50 cut-offs as resolved periods in nm (pixel / f), when the data carry a geometry."""
    from ptychobench.evaluate.compare import frc_period_m

    pixel = object_pixel_m(run_dir)
    if pixel is None:
        return {"pixel_nm": None}
    rows = []
    for a in models:
        st = agg[a].get("frc50", {}) if isinstance(agg[a], dict) else {}
        cells = [_text_cell(a)]
        for p in ("phase", "amplitude"):
            f = st.get(f"mean_{p}")
            period = frc_period_m(f if isinstance(f, int | float) else None, pixel)
            cells += [_cell(f), _cell(None if period is None else round(period * 1e9, 1))]
        rows.append(cells)
    header = [
        "model",
        "phase FRC50 (cycles/px)",
        "phase period (nm)",
        "amplitude FRC50 (cycles/px)",
        "amplitude period (nm)",
    ]
    return {
        "pixel_nm": f"{pixel * 1e9:.1f}",
        "nyquist_nm": f"{2 * pixel * 1e9:.1f}",
        "header": header,
        "rows": rows,
    }


def _tables_data(rows: list[dict], conds: list[tuple]) -> dict:
    # (condition key, model, metric) -> row; the first row wins if the CSV repeats one.
    index: dict[tuple[str, str, str], dict] = {}
    errors: dict[tuple[str, str], str] = {}
    for r in rows:
        k = _cond_key(r["dose"], r["view"], r["split"])
        if r["metric"] == "error":
            errors.setdefault((k, r["model"]), str(r["value"] or "failed"))
        index.setdefault((k, r["model"], r["metric"]), r)
    arms = _ordered_arms({r["model"] for r in rows if r["model"]})
    if not arms or not conds:
        return {"tables": []}
    tables = []
    for metric in TABLE_METRICS:
        parts = ("value",) if metric in SCALAR_TABLE_METRICS else ("phase", "amplitude")
        header = ["dose", "view", "split"] + [
            f"{a} {p}" if len(parts) > 1 else a for a in arms for p in parts
        ]
        body = []
        for dose, view, split in conds:
            k = _cond_key(dose, view, split)
            best: dict[str, float] = {}
            for p in parts:
                vals = []
                for a in arms:
                    r = index.get((k, a, metric))
                    v = r.get(p) if r else None
                    if _cast().method(a) and isinstance(v, float) and math.isfinite(v):
                        vals.append(v)
                if vals:
                    best[p] = max(vals) if HIGHER_IS_BETTER[metric] else min(vals)
            cells = [_cell(int(float(dose))), _text_cell(view), _text_cell(split)]
            for a in arms:
                r = index.get((k, a, metric))
                for p in parts:
                    v = r.get(p) if r else None
                    if isinstance(v, float):
                        cls = "best" if _cast().method(a) and best.get(p) == v else ""
                        cells.append(_value_cell(v, cls, k, a, metric, p))
                    elif (k, a) in errors:
                        cells.append(_cell_dict("failed", "fail", [("title", errors[(k, a)])]))
                    else:
                        cells.append(_na_cell())
            body.append(cells)
        tables.append({"metric": metric, "header": header, "rows": body})
    return {"tables": tables}


def _timings_data(jobs: dict[str, dict]) -> dict:
    if not jobs:
        return {"rows": []}
    kinds: dict[str, dict[str, Any]] = {}
    for job in jobs.values():
        kind = str(job.get("kind", "?"))
        k = kinds.setdefault(kind, {"n": 0, "ok": 0, "sec": 0.0, "max_sec": None, "rss": None})
        k["n"] += 1
        k["ok"] += job.get("status") == "success"
        s = job.get("seconds")
        if isinstance(s, int | float) and math.isfinite(s):
            k["sec"] += float(s)
            k["max_sec"] = float(s) if k["max_sec"] is None else max(k["max_sec"], float(s))
        m = job.get("peak_rss_mb")
        if isinstance(m, int | float) and math.isfinite(m):
            k["rss"] = float(m) if k["rss"] is None else max(k["rss"], float(m))
    header = ["job kind", "jobs", "succeeded", "total seconds", "max seconds", "max peak RSS (MB)"]
    rows = []
    for kind, k in kinds.items():
        numbers = [k["n"], k["ok"], round(k["sec"], 2), k["max_sec"], k["rss"]]
        rows.append([_text_cell(kind)] + [_cell(x) for x in numbers])
    maxes = [k["max_sec"] for k in kinds.values() if k["max_sec"] is not None]
    rss = [k["rss"] for k in kinds.values() if k["rss"] is not None]
    totals = [
        sum(k["n"] for k in kinds.values()),
        sum(k["ok"] for k in kinds.values()),
        round(sum(k["sec"] for k in kinds.values()), 2),
        max(maxes) if maxes else None,
        max(rss) if rss else None,
    ]
    rows.append([_cell_dict("total", "text", tag="th")] + [_cell(x) for x in totals])
    return {"header": header, "rows": rows}


def _environment_data(env: Any) -> dict:
    if not isinstance(env, dict) or not env:
        return {"rows": []}
    rows = []
    for k, v in env.items():
        text = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        rows.append([_text_cell(k), _text_cell(text)])
    return {"rows": rows}


def _log_tail(run_dir: Path, log: Any) -> str | None:
    if not log:
        return None
    text = _read_text(run_dir / str(log))
    if text is None:
        return None
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


def _failures_data(
    run_dir: Path, jobs: dict[str, dict], missing: list[str], rows: list[dict]
) -> dict:
    bad = [
        {
            "id": jid,
            "kind": job.get("kind", "?"),
            "status": job.get("status"),
            "error": job.get("error") or "(no message)",
            "log": job.get("log"),
            "tail": _log_tail(run_dir, job.get("log")),
        }
        for jid, job in jobs.items()
        if job.get("status") in ("failed", "blocked")
    ]
    arm_errors = [
        [
            _text_cell(
                _cond_key(r["dose"], r["view"], r["split"])
                + (f" (repeat {r['repeat']})" if r.get("repeat") else "")
            ),
            _text_cell(r["model"]),
            _text_cell(r["value"]),
        ]
        for r in rows
        if r["metric"] == "error"
    ]
    return {"bad": bad, "missing": missing, "arm_errors": arm_errors, "tail_lines": LOG_TAIL_LINES}


def _compare_status(
    run_dir: Path, jobs: dict[str, dict], conds: list[tuple]
) -> tuple[int, list[str]]:
    """(number of comparisons, keys of those without a successful comparison), every repeat
    counted (a condition without compare jobs in the manifest counts as its repeat 0)."""
    from ptychobench.study.aggregate import condition_key

    compare_jobs: dict[str, dict] = {}
    repeats: dict[str, list[int]] = {}
    for job in jobs.values():
        if job.get("kind") == "compare" and job.get("dose") is not None:
            r = int(job.get("repeat") or 0)
            k = condition_key(job["dose"], job.get("view"), job.get("split"), r)
            compare_jobs[k] = job
            repeats.setdefault(_cond_key(job["dose"], job.get("view"), job.get("split")), [])
            repeats[_cond_key(job["dose"], job.get("view"), job.get("split"))].append(r)
    missing, n = [], 0
    for dose, view, split in conds:
        for r in sorted(repeats.get(_cond_key(dose, view, split), [0])):
            n += 1
            k = condition_key(dose, view, split, r)
            job = compare_jobs.get(k)
            csv_ok = (run_dir / "compare" / k / "comparison_metrics.csv").is_file()
            if not csv_ok or (job is not None and job.get("status") != "success"):
                why = "no comparison_metrics.csv" if not csv_ok else f"job {job.get('status')}"
                missing.append(f"{k}: {why}")
    return n, missing


def _headline_data(summary: Any, jobs: dict[str, dict], n_cmp: int, missing: list[str]) -> dict:
    if isinstance(summary, dict) and "n_jobs" in summary and "n_success" in summary:
        n_jobs, n_ok = summary["n_jobs"], summary["n_success"]
    else:
        # The report and verify jobs are still running when this page is written: not counted.
        counted = [j for j in jobs.values() if j.get("kind") not in ("report", "verify")]
        n_jobs, n_ok = len(counted), sum(j.get("status") == "success" for j in counted)
    return {
        "n_ok": n_ok,
        "n_jobs": n_jobs,
        "jobs_ok": n_ok == n_jobs,
        "n_cmp": n_cmp,
        "n_missing": len(missing),
    }


def _dose_words(dose: float) -> str:
    """1000.0 → ``1e3``; a dose that is not a power of ten keeps its integer."""
    k = math.log10(dose) if dose > 0 else float("nan")
    return f"1e{round(k)}" if math.isfinite(k) and abs(k - round(k)) < 1e-9 else f"{dose:g}"


def _tint(arm: str | None) -> str:
    """A light version of the arm's plot colour (grey for a tie) as ``#rrggbb``."""
    from matplotlib.colors import to_hex, to_rgb

    color = _cast().color(arm) if arm is not None else None
    if color is None:
        return "#eeeeee"
    rgb = to_rgb(color)
    return to_hex(tuple(0.35 * c + 0.65 for c in rgb))


def _verdict_phrase(v: dict[str, Any], d: int = 3) -> str:
    """One clause of a verdict sentence: the best arm at a dose and how sure that is."""
    at = f"at {_dose_words(v['dose'])} photons"
    if v["leader"] is None:
        return f"{at} no arm could be scored"
    trust = v.get("yardstick")
    if trust is not None and not trust["trusted"]:
        return f"{at} no verdict ({v['leader']} leads by this score, but {trust['reason']})"
    if v["runner_up"] is None:
        return f"{at} only {v['leader']} was scored"
    lo, hi = v["ci95_low"], v["ci95_high"]
    if v["margin"] is None:
        text = f"{at} {v['leader']} leads {v['runner_up']} (no paired repeat to compare)"
    elif v["tie"]:
        text = (
            f"{at} {v['leader']} and {v['runner_up']} tie (difference {v['margin']:+.{d}f}, "
            f"95 % CI {lo:+.{d}f} to {hi:+.{d}f})"
        )
    elif lo is None:
        text = (
            f"{at} {v['leader']} is best, {v['margin']:.{d}f} ahead of {v['runner_up']} "
            "(one repeat: no interval)"
        )
    else:
        text = (
            f"{at} {v['leader']} is best, {v['margin']:.{d}f} ahead of {v['runner_up']} "
            f"(95 % CI {lo:.{d}f} to {hi:.{d}f})"
        )
    best, floor = v["means"][v["leader"]], v.get("floor")
    lower = v["metric"] in LOWER_IS_BETTER
    if floor is not None and (best > floor if lower else best < floor):
        # the arm's number first, then the floor's: "X (a) vs the floor (f)"
        text += (
            f", and still {'worse than' if lower else 'below'} the constant-object floor "
            f"({v['leader']} {best:.{d}f} vs the floor {floor:.{d}f})"
        )
    return text


def _leads(found: Sequence[dict[str, Any]], metric: tuple[str, str, str]) -> bool:
    return any(v["leader"] is not None for v in found if (v["metric"], v["part"]) == metric[:2])


def verdict_order(found: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """:data:`VERDICT_METRICS` with the headline first: phase SSIM, or — measured data, no
    ground truth — the first metric some arm leads (the held-out NLL)."""
    order = list(VERDICT_METRICS)
    first = next((m for m in order if _leads(found, m)), order[0])
    order.remove(first)
    return [first, *order]


def yardstick_lines(check: dict[str, Any] | None) -> list[str]:
    """The report's statement of how far this run's reference-free scores can be believed
    (:func:`ptychobench.study.aggregate.yardstick_check`), one sentence per score."""
    if not check or check.get("mode") in (None, "none"):
        return []
    labels = {f"{m} {p}": label for m, p, label in VERDICT_METRICS}
    truth = check["mode"] == "truth"
    lines = []
    for metric, s in check["scores"].items():
        name = labels.get(f"{metric} {s['part']}", metric)
        against = labels.get(s["against"], s["against"])
        against = f"the ground truth's {against}" if truth else f"the {against}"
        if s["rho"] is None:
            lines.append(f"{name}: not checked against {against} (too few scored arms).")
            continue
        agree = f"the same best arm in {s['winner_agrees']}/{s['conditions']} conditions"
        if s["trusted"]:
            tail = (
                "it names a winner only where it agrees with the truth"
                if truth else "a winner is named only where both scores agree"
            )
            verdict = f"trusted ({tail})"
        else:
            verdict = (
                "NOT trusted: on data like these it cannot pick the method, and its grid names "
                "no winner"
            )
        pairs = ""
        if s.get("separated_pairs"):
            pairs = (
                f"; it orders {s['separated_agree']}/{s['separated_pairs']} of the arm pairs "
                f"{'the truth' if truth else 'the other score'} puts ≥ 0.05 apart alike"
            )
        lines.append(
            f"{name} against {against}: Spearman ρ = {s['rho']:+.2f} over {s['n']} arm × "
            f"condition cells (needed {s['sign'] * check['threshold']:+.1f} or beyond), "
            f"{agree}{pairs} — {verdict}."
        )
    if not truth and lines:
        lines.insert(
            0,
            "No ground truth: the two reference-free scores are checked against each other; "
            "where they disagree neither is believed.",
        )
    return lines


def verdict_view(
    found: Sequence[dict[str, Any]], n_repeats: int, check: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the report's first screen shows, from :func:`ptychobench.study.aggregate.verdicts`
    (and ``check``, :func:`ptychobench.study.aggregate.yardstick_check`).

    Returns ``{"sentences", "views", "tabs": [{"id", "metric", "part", "label", "rows": [{
    "dose_label", "cells": [{"view", "dose", "arm", "margin", "arm_text", "detail", "color",
    "title"}]}]}], "yardstick" (sentences), "lede", "legend", "headline_label",
    "n_repeats"}``; ``dose`` and ``margin`` are ``repr(float)`` so the verifier can compare
    them exactly (``margin`` "" when none).
    """
    views = list(dict.fromkeys(v["view"] for v in found))
    doses = sorted({float(v["dose"]) for v in found})
    index = {(v["view"], float(v["dose"]), v["metric"], v["part"]): v for v in found}
    order = verdict_order(found)
    if not _leads(found, VERDICT_METRICS[0]):  # no ground truth: only what could be scored
        order = [m for m in order if _leads(found, m)] or order
    head_metric, head_part, head_label = order[0]
    sentences = []
    for view in views:
        clauses = [
            _verdict_phrase(index[(view, d, head_metric, head_part)])
            for d in doses
            if (view, d, head_metric, head_part) in index
        ]
        if clauses:
            sentences.append(f"{view} view, {head_label}: " + "; ".join(clauses) + ".")
    tabs = []
    for metric, part, label in order:
        rows = []
        for dose in doses:
            cells = []
            for view in views:
                v = index.get((view, dose, metric, part))
                if v is None or v["leader"] is None:
                    cells.append(
                        {"view": view, "dose": repr(dose), "arm": "", "margin": "",
                         "arm_text": "—", "detail": "not scored", "color": "#ffffff",
                         "title": ""}
                    )
                    continue
                m = v["margin"]
                trust = v.get("yardstick")
                if trust is not None and not trust["trusted"]:
                    detail = f"{v['leader']} leads by this score, but {trust['reason']}"
                elif v["runner_up"] is None or m is None:
                    detail = "no runner-up"
                elif v["ci95_low"] is None:
                    detail = f"+{m:.3f} over {v['runner_up']} (1 repeat)"
                else:
                    detail = (
                        f"{m:+.3f} over {v['runner_up']} "
                        f"[{v['ci95_low']:+.3f}, {v['ci95_high']:+.3f}]"
                    )
                means = ", ".join(f"{a} {x:.4g}" for a, x in v["means"].items())
                if v.get("floor") is not None:
                    means += f"; floor {v['floor']:.4g}"
                if v.get("ceiling") is not None:
                    means += f"; ceiling {v['ceiling']:.4g}"
                cells.append(
                    {
                        "view": view,
                        "dose": repr(dose),
                        "arm": v["arm"],
                        "margin": "" if m is None else repr(float(m)),
                        "arm_text": UNTRUSTED
                        if v["arm"] == UNTRUSTED
                        else f"tie ({v['leader']} ≈ {v['runner_up']})"
                        if v["tie"]
                        else v["leader"],
                        "detail": detail,
                        "color": _tint(None if v["tie"] or v["arm"] == UNTRUSTED else v["leader"]),
                        "title": f"means over repeats: {means}",
                    }
                )
            rows.append({"dose_label": _dose_words(dose), "cells": cells})
        tabs.append(
            {"id": f"{metric}-{part}", "metric": metric, "part": part, "label": label,
             "rows": rows}
        )
    reps = "one repeat" if n_repeats == 1 else f"{n_repeats} repeats"
    return {
        "sentences": sentences,
        "yardstick": yardstick_lines(check),
        "views": views,
        "tabs": tabs,
        "headline_label": head_label,
        "n_repeats": n_repeats,
        "lede": (
            f"Held-out (test split) scores, {reps} per condition (independent noise, scan "
            f"jitter, grouping and training seeds); headline metric: {head_label} ("
            + ("lower" if head_metric in LOWER_IS_BETTER else "higher")
            + " is better); the buttons switch the grid's metric (NRMSE and held-out NLL: "
            "lower is better; held-out NLL and half-scan FRC need no ground truth)."
        ),
        "legend": (
            "Cell: the arm with the best mean over repeats; below it, its margin over the "
            "runner-up and the 95 % Student-t interval of that paired difference (same data, "
            "same seeds). \"tie\": the interval contains 0. "
            + ("With one repeat there is no interval: no difference is tested. " if n_repeats
               < 2 else "")
            + "Flat (the constant-object floor) is not a candidate; hover a cell for every "
            "arm's mean."
        ),
    }


def _paired_data(d: Any) -> dict:
    """The aggregate paired differences subject − arm with their intervals (deltas.json)."""
    agg = (d or {}).get("paired", {}).get("aggregate") if isinstance(d, dict) else None
    if not agg:
        return {"rows": []}
    cols = [("ssim", "phase"), ("ssim", "amplitude"), ("ms_ssim", "phase"), ("nrmse", "value")]
    rows = []
    for key in sorted(agg, key=lambda k: _ordered_arms([k.removeprefix("vs_")])):
        cells = [_text_cell(f"{_cast().lineup.subject} − " + key.removeprefix("vs_"))]
        for metric, part in cols:
            st = agg[key].get(metric, {}).get(part)
            if not st or st.get("mean") is None:
                cells.append(_na_cell())
            elif st.get("ci95_low") is None:
                cells.append(_text_cell(f"{st['mean']:+.3f} (n={st['n_repeats']})"))
            else:
                cells.append(
                    _text_cell(
                        f"{st['mean']:+.3f} [{st['ci95_low']:+.3f}, {st['ci95_high']:+.3f}]"
                    )
                )
        rows.append(cells)
    header = ["difference"] + [f"{m} {p}" for m, p in cols]
    return {"header": header, "rows": rows, "subject": _cast().lineup.subject}


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined
    from markupsafe import Markup

    env = Environment(
        loader=PackageLoader("ptychobench.study", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    # The sections' text is escaped exactly as html.escape(quote=True) does (``'`` → ``&#x27;``).
    env.filters["esc"] = lambda x: Markup(_esc(x))
    return env


def _template():
    return _environment().get_template("report.html.j2")


def _render_macro(name: str, data: Any) -> str:
    """One macro of ``templates/_macros.html.j2`` rendered alone (tests, debugging)."""
    return str(getattr(_environment().get_template("_macros.html.j2").module, name)(data))


def write_report(run_dir: Path) -> list[Path]:
    """Write the study's figures and its single-page HTML report.

    Parameters
    ----------
    run_dir : Path
        Study run directory. Missing inputs (a failed comparison, an absent analysis file) are
        reported in the page rather than raising.

    Returns
    -------
    list of Path
        ``analysis/headline_dose_response.png``, ``analysis/dose_response.png``,
        ``analysis/montage_dose_<D>.png`` per dose (ascending),
        ``analysis/quality_vs_seconds.png`` and ``analysis/report.html``, in that order.
    """
    run_dir = Path(run_dir)
    manifest = _read_json(run_dir / "manifest.json")
    manifest = manifest if isinstance(manifest, dict) else {}
    token = _CAST.set(_Cast.of(manifest))
    try:
        return _write_report(run_dir, manifest)
    finally:
        _CAST.reset(token)


def _write_report(run_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    analysis = run_dir / "analysis"
    analysis.mkdir(parents=True, exist_ok=True)
    lineup = _cast().lineup
    jobs = manifest.get("jobs") if isinstance(manifest.get("jobs"), dict) else {}
    planned = manifest.get("planned") or []
    # Manifest order follows the plan; jobs not in the plan go last (sorted for determinism).
    order = {jid: i for i, jid in enumerate(planned)}
    jobs = dict(sorted(jobs.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    conditions = [
        c
        for c in (manifest.get("conditions") or [])
        if isinstance(c, dict) and {"dose", "view", "split"} <= set(c)
    ]
    raw = _read_metrics_long(analysis / "metrics_long.csv")
    rows = mean_rows(raw)  # every table shows the mean over repeats
    n_repeats = max([int(r["repeat"]) + 1 for r in raw] + [1])
    summary = _read_json(analysis / "metrics_summary.json")
    conds = _conditions_from(conditions, rows)
    cond_dicts = [{"dose": d, "view": v, "split": s} for d, v, s in conds]

    written: list[Path] = []
    import matplotlib  # noqa: F401  (fail early and clearly if plotting is unavailable)

    head_png = analysis / "headline_dose_response.png"
    headline_plot(raw, head_png, cond_dicts, verdict_order(verdicts(raw, lineup=lineup))[0])
    written.append(head_png)
    dr = analysis / "dose_response.png"
    dose_response_plot(raw, dr, cond_dicts)
    written.append(dr)
    montages: list[tuple[float, Path]] = []
    for dose in sorted({d for d, _, _ in conds}):
        p = analysis / f"montage_{_dose_label(dose)}.png"
        montage(run_dir, dose, cond_dicts, p)
        montages.append((dose, p))
        written.append(p)

    cost_png = analysis / "quality_vs_seconds.png"
    cost_plot(run_dir, rows, cond_dicts, cost_png)
    written.append(cost_png)

    n_cmp, missing = _compare_status(run_dir, jobs, conds)
    name = _study_name(run_dir) or run_dir.name
    montages_data = {
        "montages": [
            {"label": _dose_label(d), "figure": _figure(p, f"montage {_dose_label(d)}")}
            for d, p in montages
        ]
    }
    has_failures = bool(missing) or any(
        j.get("status") in ("failed", "blocked") for j in jobs.values()
    )
    # (id = the name of the section's macro in _macros.html.j2, title, its data, open)
    sections = [
        ("summary", "Summary over the test split", _summary_data(run_dir, summary), True),
        ("bracket", "Between floor and ceiling", _bracket_data(rows, conds), True),
        ("solvers", "Do the iterative solvers agree?", _solvers_data(raw), True),
        ("cost", "Quality per second", _cost_data(run_dir, rows, conds, cost_png), True),
        (
            "plots",
            "Dose response, every metric and split",
            {"figure": _figure(dr, "dose response")},
            False,
        ),
        ("tables", "Metrics per condition (means over repeats)", _tables_data(rows, conds), False),
        ("montages", "Reconstructions (repeat 0)", montages_data, False),
        ("design", "Design (study.toml)", _design_data(run_dir), False),
        ("overlap", "Overlap per view", _overlap_data(run_dir, conds), False),
        ("timings", "Timings and memory", _timings_data(jobs), False),
        ("environment", "Environment", _environment_data(manifest.get("environment")), False),
        ("failures", "Failures", _failures_data(run_dir, jobs, missing, raw), has_failures),
    ]
    view = verdict_view(
        verdicts(raw, lineup=lineup), n_repeats, yardstick_check(raw, lineup=lineup)
    )
    view["plot"] = _figure(head_png, "test-split phase SSIM vs dose")
    page = _template().render(
        name=name,
        purpose=(_design_key(run_dir, "description") or "").strip(),
        verdict=view,
        status=_headline_data(summary, jobs, n_cmp, missing),
        sections=[
            {"id": sid, "title": title, "data": data, "open": is_open}
            for sid, title, data, is_open in sections
        ],
    )
    out = analysis / "report.html"
    with atomic_open(out, "w") as fh:
        fh.write(page)
    written.append(out)
    return written


def _solvers_data(raw: list[dict]) -> dict[str, Any]:
    """The iterative solvers side by side per test condition (:func:`ptychobench.study.
    aggregate.solver_agreement`): phase SSIM and seconds of each, the spreads, the references."""
    found = solver_agreement(raw, _cast().lineup, seconds=True)
    if not found:
        return {"rows": []}
    header = ["solver (library)"] + [f"{_dose_words(c['dose'])} {c['view']}" for c in found]
    body = []
    for arm in found[0]["arms"]:
        cells = [_text_cell(f"{arm} ({found[0]['libraries'][arm]})")]
        for c in found:
            m = c["arms"][arm]
            x, sec = m["ssim phase"], m["computation_time_s value"]
            if x is None:
                cells.append(_na_cell())
                continue
            text = f"{x:.3f}" + (f" · {sec:.0f} s" if sec is not None else "")
            cls = "best" if arm == c["best"] else ""
            cells.append(_cell_dict(text, cls))
        body.append(cells)
    for label, key in (("spread, every solver", "spread"),
                       ("spread between libraries", "independent_spread")):
        cells = [_text_cell(label)]
        for c in found:
            v = c[key]
            cls = "bad" if v is not None and v > AGREE_WITHIN else ""
            cells.append(_na_cell() if v is None else _cell_dict(f"{v:.3f}", cls))
        body.append(cells)
    for label, key in (("floor (Flat)", "floor"), ("ceiling", "ceiling")):
        if any(c[key] is not None for c in found):
            body.append([_text_cell(label)] + [
                _na_cell() if c[key] is None else _cell(c[key]) for c in found
            ])
    return {"header": header, "rows": body, "within": AGREE_WITHIN}


#: Phase SSIM within which two solvers are said to agree (the report marks a wider spread).
AGREE_WITHIN = 0.05


def _bracket_data(rows: list[dict], conds: list[tuple[float, str, str]]) -> dict[str, Any]:
    """Each method's place between the floor and the ceiling on the headline metric (test-split
    phase SSIM): its share (arm − floor) / (ceiling − floor) per condition, 0 % at the floor and
    100 % at what the data permit. Empty without both references."""
    index = {
        (_cond_key(r["dose"], r["view"], r["split"]), r["model"]): r.get("phase")
        for r in rows
        if r["metric"] == "ssim"
    }
    tests = [c for c in conds if c[2] == "test"]
    names = {m for _, m in index}
    floor, ceiling = _cast().floor(names), _cast().lineup.reference("ceiling", names)
    if floor is None or ceiling is None or not tests:
        return {"rows": [], "floor": floor, "ceiling": ceiling}
    header = ["arm"] + [f"{_dose_words(d)} {v}" for d, v, _ in tests]
    levels = []
    for ref in (floor, ceiling):
        cells = [_text_cell(f"{ref} (phase SSIM)")]
        for d, v, s in tests:
            x = index.get((_cond_key(d, v, s), ref))
            cells.append(_cell(x) if isinstance(x, float) else _na_cell())
        levels.append(cells)
    body = []
    for arm in [a for a in _ordered_arms(names) if _cast().method(a)]:
        cells = [_text_cell(arm)]
        for d, v, s in tests:
            k = _cond_key(d, v, s)
            x, lo, hi = index.get((k, arm)), index.get((k, floor)), index.get((k, ceiling))
            if not all(isinstance(t, float) and math.isfinite(t) for t in (x, lo, hi)) or hi <= lo:
                cells.append(_na_cell())
                continue
            share = (x - lo) / (hi - lo)
            cls = "bad" if share > 1.0 else ""  # above the ceiling: the reference is too weak
            cells.append(_cell_dict(f"{100 * share:.0f} %", cls, [("data-share", repr(share))]))
        body.append(cells)
    return {"header": header, "rows": levels + body, "floor": floor, "ceiling": ceiling}
