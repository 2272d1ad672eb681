"""``compare``: align every arm identically, score it, and write the comparison bundle (SPEC §7.3).

Outputs in ``out_dir``: ``comparison_metrics.csv`` (tidy: ``model,metric,amplitude,phase,value``),
``metrics.json``, ``frc_curves.csv``, ``comparison_plot.png`` and ``reconstructions.npz``. A
``Flat`` floor arm (the truth's mean amplitude, zero phase) is scored like every other arm unless
``floor=False``. An arm that fails keeps its rows with empty cells plus an ``error`` row.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptychobench.data.dataset import PtychoDataset
from ptychobench.data.io import atomic_open
from ptychobench.data.recon import Reconstruction
from ptychobench.stitch import validate_phase_sync, validate_weighting

__all__ = ["CompareSettings", "CompareResult", "compare", "default_crop_size", "METRICS"]

TUPLE_METRICS = (
    "mae",
    "mse",
    "psnr",
    "psnr255",
    "ssim",
    "ms_ssim",
    "pearson",
    "frc50",
    "frc1over7",
    "frc_halfbit",
    "halfscan_frc_halfbit",
    "halfscan_frc1over7",
)
SCALAR_ROWS = (
    "nrmse",
    "heldout_nll_rel",
    "registration_offset_dy",
    "registration_offset_dx",
    "computation_time_s",
    "train_s",
    "infer_s",
    "refine_s",
    "n_patterns",
)
METRICS = TUPLE_METRICS + SCALAR_ROWS
ARM_ORDER = ("PtychoPINN", "Baseline", "PtyChi", "PtychoPINN+LSQML", "PtychoPINN+TTR", "Flat")
COST_ROWS = ("computation_time_s", "train_s", "infer_s", "refine_s")
MIN_SCORED_SIDE = 11


def default_crop_size(N: int) -> int:
    """Stitching crop M = N/4 rounded to an even number (≥ 2)."""
    return max(2, 2 * round(N / 8))


@dataclass
class CompareSettings:
    """How arms are aligned and scored; identical for every arm.

    ``stitch_weighting`` (``"flat"`` | ``"probe"``) is how bundle arms are stitched when compare
    runs them (:func:`ptychobench.infer.infer`); it is recorded in the settings. ``crop_size_M``
    is the flat stitch crop and also sets the scored region's margin, whatever the weighting.
    ``phase_sync``: iterations of phase synchronisation when bundle arms are stitched (0 = off;
    :func:`ptychobench.stitch.synchronise_phases`), recorded likewise.
    """

    crop_size_M: int | None = None
    stitch_weighting: str = "flat"
    phase_sync: int = 0
    registration: str = "all"
    phase_align: str = "plane"
    ms_ssim_sigma: float = 1.0
    floor: bool = True
    border: int = 2
    register_on: str = "complex"

    def validate(self, N: int) -> int:
        M = default_crop_size(N) if self.crop_size_M is None else int(self.crop_size_M)
        if not 0 < M <= N:
            raise ValueError(f"stitch crop size M: expected 0 < M <= N={N}, found {M}")
        if self.registration not in ("all", "none"):
            raise ValueError(f"registration: expected 'all' or 'none', found {self.registration!r}")
        if self.phase_align not in ("plane", "mean", "none"):
            raise ValueError(
                f"phase_align: expected 'plane', 'mean' or 'none', found {self.phase_align!r}"
            )
        if not (self.ms_ssim_sigma >= 0 and math.isfinite(self.ms_ssim_sigma)):
            raise ValueError(f"ms_ssim_sigma: expected >= 0, found {self.ms_ssim_sigma}")
        validate_weighting(self.stitch_weighting)
        validate_phase_sync(self.phase_sync)
        return M


@dataclass
class CompareResult:
    """Scores per arm (``metrics[arm][metric] = (amp, phase) | value``) and failures."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    snapshots: dict[str, tuple[float, float]] = field(default_factory=dict)
    frc: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def arm_cost(name: str, meta: dict[str, Any]) -> dict[str, float | None]:
    """Seconds an arm cost: ``computation_time_s = infer_s + refine_s``; ``train_s`` beside it.

    ``train_s`` is the network's training (amortised over every dataset it reconstructs, so
    stated, never added); ``infer_s`` a network's forward pass and stitching; ``refine_s``
    iterations on the data itself (pty-chi's epochs, LSQML after the PINN, test-time
    refinement). A reconstruction file without the split counts a network's ``seconds`` as
    inference and a solver's as refinement. Unknown values are None (empty CSV cells).
    """
    if name == "Flat":
        return dict.fromkeys(COST_ROWS, 0.0)
    seconds = meta.get("seconds")
    infer_s, refine_s = meta.get("infer_s"), meta.get("refine_s")
    network = meta.get("kind") in ("pinn", "baseline")
    if infer_s is None and refine_s is None and seconds is not None:
        infer_s, refine_s = (seconds, 0.0) if network else (0.0, seconds)
    total = infer_s + refine_s if infer_s is not None and refine_s is not None else seconds
    train_s = meta.get("train_s")
    if train_s is None and not network and "+" not in name:
        train_s = 0.0  # a solver does not train
    return {
        "computation_time_s": total,
        "train_s": train_s,
        "infer_s": infer_s,
        "refine_s": refine_s,
    }


def _ordered(names) -> list[str]:
    known = [a for a in ARM_ORDER if a in names]
    return known + sorted(n for n in names if n not in ARM_ORDER)


def compare(
    ds: PtychoDataset,
    arms: dict[str, Reconstruction | BaseException],
    out_dir: str | os.PathLike[str],
    settings: CompareSettings | None = None,
    data_source: str = "dataset",
    region_coords: np.ndarray | None = None,
    snapshots: dict[str, np.ndarray] | None = None,
    reference_free: dict[str, dict[str, Any]] | None = None,
) -> CompareResult:
    """Align, score and write the comparison of ``arms`` against ``ds.objectGuess``.

    Parameters
    ----------
    ds : PtychoDataset
        The data the arms reconstructed (coords define the scanned region; objectGuess the truth).
    arms : dict name -> Reconstruction, or the exception that prevented loading/running it
    out_dir : directory, created if needed
    settings : CompareSettings
    region_coords : (n, 2) positions that define the scored region instead of ``ds.coords`` — a
        debug-limited arm covers only its own patterns, so every arm is scored there
        (``settings["debug_limited"]`` is then True)
    snapshots : name -> (H, W) complex intermediate objects of an arm (e.g. LSQML after k
        epochs): aligned together with the arms (so they share the arms' scored pixels) and
        scored into ``result.snapshots[name] = (amplitude SSIM, phase SSIM)``; written nowhere
    reference_free : name -> scores that need no ground truth
        (:mod:`ptychobench.evaluate.reference_free`: ``heldout_nll_rel``,
        ``halfscan_frc_halfbit`` and ``halfscan_frc1over7`` as (amplitude, phase)), written
        beside the arm's ground-truth scores

    Returns
    -------
    CompareResult. Without ground truth (no ``objectGuess``) only ``reference_free`` scores and
    costs are written (no Flat floor); without truth and without ``reference_free`` it raises
    ``ValueError`` after writing the reconstructions and the plot.
    """
    from ptychobench.evaluate.align import align_arms
    from ptychobench.evaluate.frc import frc
    from ptychobench.evaluate.metrics import score, ssim

    cfg = settings or CompareSettings()
    M = cfg.validate(ds.N)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = CompareResult(out_dir=out)
    result.settings = {
        "crop_size_M": M,
        "stitch_weighting": cfg.stitch_weighting,
        "phase_sync": cfg.phase_sync,
        "registration": cfg.registration,
        "phase_align": cfg.phase_align,
        "ms_ssim_sigma_amplitude": cfg.ms_ssim_sigma,
        "ms_ssim_sigma_phase": 0.0,
        "floor": cfg.floor,
        "border": cfg.border,
        "register_on": cfg.register_on,
        "data": data_source,
        "n_patterns": ds.n,
        "debug_limited": region_coords is not None,
        # FRC cut-offs are in cycles/px; with a geometry, pixel / f is the resolved period
        "object_pixel_size_m": _object_pixel_m(ds),
    }
    images: dict[str, np.ndarray] = {}
    for name, rec in arms.items():
        if isinstance(rec, BaseException):
            result.errors[name] = str(rec)
        else:
            images[name] = rec.reconstructed_object
    if ds.objectGuess is None and reference_free is not None:
        return _compare_without_truth(ds, arms, images, out, result, reference_free)
    if ds.objectGuess is None:
        _write_reconstructions(out / "reconstructions.npz", images, {}, None)
        _plot(out / "comparison_plot.png", {k: v for k, v in images.items()}, None, {})
        raise ValueError(
            f"{data_source}: metrics need ground truth: key 'objectGuess' is missing "
            f"(wrote reconstructions.npz and comparison_plot.png to {out})"
        )
    truth = ds.objectGuess
    if cfg.floor:
        flat_amp = float(np.abs(truth).mean())
        images["Flat"] = np.full(truth.shape, flat_amp, dtype=np.complex64)
    for name, img in list(images.items()):
        if not np.isfinite(img).all():
            result.errors[name] = f"{name}: reconstruction has non-finite values"
            images.pop(name)
        elif not np.any(img):
            result.errors[name] = f"{name}: reconstruction is all zeros"
            images.pop(name)
    snaps = {
        f"snapshot:{k}": np.asarray(v)
        for k, v in (snapshots or {}).items()
        if np.isfinite(v).all() and np.any(v)
    }
    alignment = align_arms(
        {**images, **snaps},
        truth,
        ds.coords if region_coords is None else np.asarray(region_coords, np.float64),
        crop_size_M=M,
        border=cfg.border,
        registration=cfg.registration,
        phase_align=cfg.phase_align,
        register_on=cfg.register_on,
    )
    for key in snaps:
        aligned = alignment.aligned.pop(key, None)
        alignment.offsets.pop(key, None)
        alignment.errors.pop(key, None)
        alignment.notes.pop(key, None)
        if aligned is not None and min(aligned.shape) >= MIN_SCORED_SIDE:
            t = alignment.truth
            result.snapshots[key.removeprefix("snapshot:")] = (
                ssim(np.abs(aligned), np.abs(t)),
                ssim(np.angle(aligned), np.angle(t)),
            )
    result.errors.update(alignment.errors)
    result.notes.update(alignment.notes)
    for name, aligned in alignment.aligned.items():
        if min(aligned.shape) < MIN_SCORED_SIDE:
            result.errors[name] = (
                f"{name}: scored region {aligned.shape[0]}×{aligned.shape[1]} px is too small: "
                f"expected at least {MIN_SCORED_SIDE} px per side (the SSIM window)"
            )
            continue
        try:
            s = score(aligned, alignment.truth, ms_ssim_sigma_amplitude=cfg.ms_ssim_sigma)
            fa = frc(np.abs(aligned), np.abs(alignment.truth))
            fp = frc(np.angle(aligned), np.angle(alignment.truth))
        except ValueError as exc:
            result.errors[name] = f"{name}: scoring failed: {exc}"
            continue
        s["frc50"] = (fa.frc50, fp.frc50)
        s["frc1over7"] = (fa.frc1over7, fp.frc1over7)
        s["frc_halfbit"] = (fa.frc_halfbit, fp.frc_halfbit)
        dy, dx = alignment.offsets.get(name, (0.0, 0.0))
        s["registration_offset_dy"] = float(dy)
        s["registration_offset_dx"] = float(dx)
        meta = (
            arms[name].metadata
            if name in arms and not isinstance(arms[name], BaseException)
            else {}
        )
        s.update(arm_cost(name, meta))
        s.update((reference_free or {}).get(name, {}))
        s["n_patterns"] = meta.get("n_patterns", ds.n)
        if meta.get("debug_limited"):
            s["debug_limited"] = True
        result.metrics[name] = s
        result.frc[name] = {"frequency": fa.frequency, "amplitude": fa.curve, "phase": fp.curve}
    result.settings["region"] = [
        [alignment.region[0].start, alignment.region[0].stop],
        [alignment.region[1].start, alignment.region[1].stop],
    ]
    result.settings["crop"] = [
        [alignment.crop[0].start, alignment.crop[0].stop],
        [alignment.crop[1].start, alignment.crop[1].stop],
    ]
    names = _ordered(set(result.metrics) | set(result.errors))
    _write_csv(out / "comparison_metrics.csv", names, result)
    _write_json(out / "metrics.json", names, result)
    _write_frc(out / "frc_curves.csv", result)
    _write_reconstructions(out / "reconstructions.npz", images, alignment.aligned, alignment.truth)
    _plot(out / "comparison_plot.png", alignment.aligned, alignment.truth, alignment.offsets)
    return result


def _compare_without_truth(
    ds: PtychoDataset,
    arms: dict[str, Reconstruction | BaseException],
    images: dict[str, np.ndarray],
    out: Path,
    result: CompareResult,
    reference_free: dict[str, dict[str, Any]],
) -> CompareResult:
    """Measured data: each arm's reference-free scores and costs; nothing needs the truth."""
    result.settings["ground_truth"] = False
    for name, img in images.items():
        if not np.isfinite(img).all() or not np.any(img):
            what = "non-finite values" if not np.isfinite(img).all() else "all zeros"
            result.errors[name] = f"{name}: reconstruction has {what}"
            continue
        meta = arms[name].metadata  # type: ignore[union-attr]
        s: dict[str, Any] = {**arm_cost(name, meta), **reference_free.get(name, {})}
        s["n_patterns"] = meta.get("n_patterns", ds.n)
        result.metrics[name] = s
    names = _ordered(set(result.metrics) | set(result.errors))
    _write_csv(out / "comparison_metrics.csv", names, result)
    _write_json(out / "metrics.json", names, result)
    _write_frc(out / "frc_curves.csv", result)
    _write_reconstructions(out / "reconstructions.npz", images, {}, None)
    _plot(out / "comparison_plot.png", images, None, {})
    return result


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return "" if not math.isfinite(x) else repr(float(f"{x:.10g}"))
    return str(x)


def _write_csv(path: Path, names: list[str], result: CompareResult) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "metric", "amplitude", "phase", "value"])
    for name in names:
        m = result.metrics.get(name, {})
        for metric in TUPLE_METRICS:
            a, p = m.get(metric, (None, None))
            w.writerow([name, metric, _fmt(a), _fmt(p), ""])
        for metric in SCALAR_ROWS:
            w.writerow([name, metric, "", "", _fmt(m.get(metric))])
        if m.get("debug_limited"):
            w.writerow([name, "debug_limited", "", "", "1"])
        if name in result.errors:
            w.writerow([name, "error", "", "", result.errors[name].replace("\n", " ")])
    with atomic_open(path, "w") as fh:
        fh.write(buf.getvalue())


def _object_pixel_m(ds: PtychoDataset) -> float | None:
    from ptychobench.physics.geometry import geometry_of

    geo = geometry_of(ds.metadata, ds.N)
    return None if geo is None else geo.object_pixel_m


def frc_period_m(cutoff: float | None, pixel_m: float | None) -> float | None:
    """The resolved full period (m) of an FRC cut-off (cycles/px): pixel / cutoff."""
    if cutoff is None or pixel_m is None or not (cutoff > 0 and math.isfinite(cutoff)):
        return None
    return pixel_m / cutoff


def _json_value(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _write_json(path: Path, names: list[str], result: CompareResult) -> None:
    doc: dict[str, Any] = {
        "settings": result.settings,
        "models": {},
        "errors": result.errors,
        "notes": result.notes,
    }
    for name in names:
        m = result.metrics.get(name, {})
        entry: dict[str, Any] = {}
        for metric in TUPLE_METRICS:
            a, p = m.get(metric, (None, None))
            entry[metric] = {"amplitude": _json_value(a), "phase": _json_value(p)}
        for metric in SCALAR_ROWS:
            entry[metric] = _json_value(m.get(metric))
        if m.get("debug_limited"):
            entry["debug_limited"] = True
        if name in result.errors:
            entry["error"] = result.errors[name]
        doc["models"][name] = entry
    with atomic_open(path, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True, allow_nan=False)


def _write_frc(path: Path, result: CompareResult) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "frequency", "amplitude_frc", "phase_frc"])
    for name in _ordered(result.frc):
        c = result.frc[name]
        for f, a, p in zip(c["frequency"], c["amplitude"], c["phase"], strict=True):
            w.writerow([name, _fmt(float(f)), _fmt(float(a)), _fmt(float(p))])
    with atomic_open(path, "w") as fh:
        fh.write(buf.getvalue())


def _write_reconstructions(path, raw, aligned, truth) -> None:
    arrays = {f"{k}_raw": np.asarray(v, np.complex64) for k, v in raw.items()}
    arrays.update({f"{k}_aligned": np.asarray(v, np.complex64) for k, v in aligned.items()})
    if truth is not None:
        arrays["truth_crop"] = np.asarray(truth, np.complex64)
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _plot(path: Path, aligned: dict[str, np.ndarray], truth, offsets) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _ordered(aligned)
    cols = names + (["truth"] if truth is not None else [])
    if not cols:
        cols = ["(no arm)"]
    rows = ["phase (rad)", "amplitude"] + (["|error|"] if truth is not None else [])
    fig, axes = plt.subplots(
        len(rows),
        len(cols),
        figsize=(2.8 * len(cols), 2.7 * len(rows)),
        squeeze=False,
        constrained_layout=True,
    )
    imgs = {n: aligned[n] for n in names}
    if truth is not None:
        imgs["truth"] = truth

    def lims(fn):
        vals = [fn(v) for v in imgs.values()]
        if not vals:
            return 0.0, 1.0
        ref = fn(truth) if truth is not None else np.concatenate([v.ravel() for v in vals])
        return float(np.nanmin(ref)), float(np.nanmax(ref))

    row_fns = [np.angle, np.abs]
    for r, (label, fn) in enumerate(zip(rows[:2], row_fns, strict=True)):
        vmin, vmax = lims(fn)
        for c, name in enumerate(cols):
            ax = axes[r, c]
            if name in imgs:
                im = ax.imshow(
                    fn(imgs[name]), vmin=vmin, vmax=vmax, cmap="twilight" if r == 0 else "gray"
                )
            title = name
            if name in offsets:
                dy, dx = offsets[name]
                title += f"\n(dy {dy:+.2f}, dx {dx:+.2f})"
            ax.set_title(title if r == 0 else label, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=axes[r, -1], shrink=0.8, label=label) if imgs else None
    if truth is not None:
        errs = {n: np.abs(imgs[n] - truth) for n in names}
        vmax = max((float(e.max()) for e in errs.values()), default=1.0)
        for c, name in enumerate(cols):
            ax = axes[2, c]
            if name in errs:
                im = ax.imshow(errs[name], vmin=0, vmax=vmax, cmap="magma")
            ax.set_title("|pred − truth|" if name in errs else "", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if name not in errs:
                ax.axis("off")
        if errs:
            fig.colorbar(im, ax=axes[2, -1], shrink=0.8)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=80)
    plt.close(fig)
