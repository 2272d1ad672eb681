"""Streaming inference of a trained model and stitching into the object's frame (SPEC §5.2, §5.4).

Memory stays bounded: groups are processed in chunks of ``batch_size`` and accumulated into one
(H, W) canvas (:class:`ptychobench.stitch.Stitcher`).

Stitch weighting (SPEC §5.4 "Weighting"): ``"flat"`` stitches each patch's central M×M crop with
weight 1; ``"probe"`` weights each pixel by ``|P|²/max|P|²`` on the decoder's N/2 window:

* PINN gs1: the model's probe, at each pattern's position;
* PINN gs2: each group is merged with ``"probe"`` weights (whatever ``merge_weighting`` the model
  trained with) and stitched with its merged Σ-weight map, so a group adds ``Σ_members |P|²·patch``
  — what stitching its members one by one with ``|P|²`` weights would add (up to interpolation);
* Baseline: the dataset's probe at each pattern's own position. The baseline never saw the probe;
  the weight expresses which pixels the pattern's data constrained.

No network ever receives absolute positions: the PINN gets group-relative offsets (zero-mean within
each group), the baseline gets none. Absolute positions serve stitching only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptychobench.data.dataset import PtychoDataset, photons_per_pattern
from ptychobench.data.grouping import group_centres, group_offsets, make_groups
from ptychobench.data.io import atomic_open
from ptychobench.data.recon import Reconstruction
from ptychobench.stitch import Stitcher, validate_phase_sync, validate_weighting

__all__ = [
    "BaselineInputs",
    "InferenceError",
    "check_input_shift",
    "data_statistics",
    "dataset_groups",
    "infer",
    "prepare_baseline_inference_data",
]

log = logging.getLogger(__name__)


class InferenceError(ValueError):
    """Inference cannot produce a trustworthy image (all-zero / non-finite, N mismatch)."""


def data_statistics(ds: PtychoDataset) -> dict[str, Any]:
    """What a bundle records about its training data and inference checks against (SPEC §5.2)."""
    photons = photons_per_pattern(ds.diffraction)
    coords = ds.coords
    return {
        "N": ds.N,
        "n_patterns": ds.n,
        "mean_photons": float(photons.mean()),
        "position_mean": [float(v) for v in coords.mean(axis=0)],
        "position_std": [float(v) for v in coords.std(axis=0)],
    }


def check_input_shift(train_stats: dict[str, Any], ds: PtychoDataset, model_name: str) -> dict:
    """Input-shift guard: N mismatch is an error, dose beyond 2× a warning, position shift info."""
    now = data_statistics(ds)
    N_train = int(train_stats.get("N", now["N"]))
    if N_train != now["N"]:
        raise InferenceError(
            f"{model_name}: expected diffraction patterns of N={N_train} (training data), found "
            f"N={now['N']}"
        )
    report: dict[str, Any] = {"train": train_stats, "inference": now, "warnings": []}
    d_train = train_stats.get("mean_photons")
    if d_train:
        ratio = now["mean_photons"] / d_train
        if ratio > 2 or ratio < 0.5:
            msg = (
                f"{model_name}: dose mismatch: trained at {d_train:.4g} photons/pattern, "
                f"applied to {now['mean_photons']:.4g} photons/pattern ({ratio:.2g}×)"
            )
            log.warning(msg)
            report["warnings"].append(msg)
    if "position_mean" in train_stats:
        shift = np.subtract(now["position_mean"], train_stats["position_mean"])
        log.info(
            "%s: positions shifted by (%.1f, %.1f) px from the training data (mean (%.1f, %.1f) "
            "-> (%.1f, %.1f)); networks see relative offsets only",
            model_name,
            *shift,
            *train_stats["position_mean"],
            *now["position_mean"],
        )
        report["position_shift"] = [float(v) for v in shift]
    return report


def dataset_groups(ds: PtychoDataset, gridsize: int, neighbor_count: int = 4, seed: int = 0):
    """(G, C) groups of ``ds``: its own view groups, else one per pattern (gs1) or KNN (gs2)."""
    C = gridsize * gridsize
    if ds.groups is not None and ds.groups.shape[1] == C:
        return ds.groups
    if gridsize == 1:
        return np.arange(ds.n, dtype=np.int64)[:, None]
    return make_groups(ds.coords, 2, neighbor_count=neighbor_count, seed=seed)


@dataclasses.dataclass
class BaselineInputs:
    """Baseline inputs flattened from groups: patterns and each pattern's own positions.

    patterns : (P, 1, N, N) float32 with P = G·C
    positions : (P, 2) float64 true scan positions (x, y)
    centred : (P, 2) float64 positions minus one scalar mean over x and y (the reference fix)
    centre : float, the scalar removed (add it back to land in the object frame)
    stats : dict of original and centred mean/std
    """

    patterns: np.ndarray
    positions: np.ndarray
    centred: np.ndarray
    centre: float
    stats: dict[str, Any]


def prepare_baseline_inference_data(
    diffraction: np.ndarray, positions: np.ndarray
) -> BaselineInputs:
    """Flatten (G, C, N, N) groups into (G·C, 1, N, N) single patterns for the baseline.

    Parameters
    ----------
    diffraction : (G, C, N, N) float32 amplitudes; C must be a perfect square (1, 4, 9, ...)
    positions : (G, C, 2) float64 each member's own scan position (x, y) — the true position,
        not a reflection through the group centre.
    """
    diffraction = np.asarray(diffraction)
    positions = np.asarray(positions, dtype=np.float64)
    if diffraction.ndim != 4:
        raise ValueError(
            f"baseline inputs: expected diffraction (G, C, N, N), found shape {diffraction.shape}"
        )
    G, C = diffraction.shape[:2]
    g = math.isqrt(C)
    if g * g != C:
        raise ValueError(
            f"baseline inputs: {C} channels is not a square gridsize (expected 1, 4, 9, ...)"
        )
    if positions.shape != (G, C, 2):
        raise ValueError(f"baseline positions: expected ({G}, {C}, 2), found {positions.shape}")
    patterns = diffraction.reshape(G * C, 1, *diffraction.shape[2:])
    flat = positions.reshape(G * C, 2)
    centre = float(flat.mean())
    centred = flat - centre
    stats = {
        "positions_mean": [float(v) for v in flat.mean(axis=0)],
        "positions_std": [float(v) for v in flat.std(axis=0)],
        "centred_mean": [float(v) for v in centred.mean(axis=0)],
        "centred_std": [float(v) for v in centred.std(axis=0)],
        "centre_scalar": centre,
    }
    log.info(
        "baseline positions: original mean (%.1f, %.1f) std (%.1f, %.1f); centred mean "
        "(%.1f, %.1f) std (%.1f, %.1f)",
        *stats["positions_mean"],
        *stats["positions_std"],
        *stats["centred_mean"],
        *stats["centred_std"],
    )
    return BaselineInputs(patterns, flat, centred, centre, stats)


def _describe(a: np.ndarray) -> dict[str, Any]:
    a = np.asarray(a)
    finite = a[np.isfinite(a)] if a.size else a
    return {
        "shape": list(a.shape),
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "nonzero": int(np.count_nonzero(a)),
    }



def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def _fast_path(model: torch.nn.Module, dev: torch.device, fast: bool) -> Iterator[None]:
    """No autograd and, on CPU with ``fast``, channels-last weights (oneDNN's faster convolution
    layout: ≈ 2× on these networks, outputs equal to ~1e-7), restored afterwards so the caller's
    model is left as it was. ``fast=False`` is the plain eager path (default layout).

    ``torch.inference_mode`` is not used: it bought ≈ 5 % here and its tensors cannot be
    updated in place outside it, which the stitcher's deferred phase synchronisation does.
    """
    channels_last = fast and dev.type == "cpu"
    try:
        if channels_last:
            model.to(memory_format=torch.channels_last)
        with torch.no_grad():
            yield
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)


def _to_device(array: np.ndarray, dev: torch.device) -> torch.Tensor:
    """A host chunk on ``dev``: to a GPU through pinned memory, without waiting for the copy."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if dev.type != "cuda":
        return t
    return t.pin_memory().to(dev, non_blocking=True)


class _Predictor:
    """``model.predict``, eager or through ``torch.compile``.

    Compiled, every chunk runs at one batch size (the last one is padded by repeating its last
    group and the padding dropped), so one graph serves the whole pass; a graph that fails to
    build or run falls back to eager with one warning (``compiled`` then reads False).
    """

    def __init__(
        self, model: torch.nn.Module, batch_size: int, compile: bool, amp: str | None = None
    ) -> None:
        self.amp = amp  # device type of a bf16 autocast around the network, or None
        self.eager = model.predict
        self.batch_size = int(batch_size)
        self.compiled = False
        self.fn = self.eager
        if compile:
            try:
                self.fn = torch.compile(model.predict, dynamic=False)
                self.compiled = True
            except Exception as exc:  # no compiler backend on this platform
                self._fall_back(exc)

    def _fall_back(self, exc: Exception) -> None:
        log.warning("torch.compile unavailable (%s: %s); inference runs eager",
                    type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        self.compiled = False
        self.fn = self.eager

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast of the network's convolutions (its outputs are complex64 either way)."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.amp, dtype=torch.bfloat16)

    def __call__(self, x: torch.Tensor, offsets: torch.Tensor, **kw: Any):
        with self.autocast():
            return self._call(x, offsets, **kw)

    def _call(self, x: torch.Tensor, offsets: torch.Tensor, **kw: Any):
        if not self.compiled:
            return self.eager(x, offsets, **kw)
        b = x.shape[0]
        if b < self.batch_size:
            fill = self.batch_size - b
            x = torch.cat([x, x[-1:].expand(fill, *x.shape[1:])])
            offsets = torch.cat([offsets, offsets[-1:].expand(fill, *offsets.shape[1:])])
        try:
            out = self.fn(x, offsets, **kw)
        except Exception as exc:
            self._fall_back(exc)
            return self.eager(x[:b], offsets[:b], **kw)
        if isinstance(out, tuple):
            return tuple(o[:b] for o in out)
        return out[:b]


def infer(
    model: torch.nn.Module,
    ds: PtychoDataset,
    *,
    train_stats: dict[str, Any] | None = None,
    batch_size: int = 256,
    device: str = "auto",
    crop_size_M: int | None = None,
    data_source: str = "dataset",
    arm: str | None = None,
    debug_limit: int | None = None,
    debug_dir: str | Path | None = None,
    neighbor_count: int = 4,
    stitch_weighting: str = "flat",
    phase_sync: int = 0,
    fast: bool = True,
    compile: bool = False,
    amp: bool = False,
) -> Reconstruction:
    """Run ``model`` over ``ds`` in chunks and stitch its patches into the object's pixel frame.

    Parameters
    ----------
    model : a PtychoPINN or Baseline (``model.kind``, ``model.config``, ``model.predict``)
    ds : PtychoDataset (groups from its view, else built for the model's gridsize)
    train_stats : the bundle's training-data statistics, for the input-shift guard
    batch_size : groups per chunk (memory is bounded by the chunk and the canvas)
    crop_size_M : stitching crop (default N/4 rounded to even); used by ``"flat"`` only
    stitch_weighting : ``"flat"`` (central M×M crop, uniform weight) or ``"probe"`` (``|P|²``
        weights on the N/2 window; see the module docstring); recorded in the metadata
    phase_sync : iterations of phase synchronisation before stitching (0 = off; see
        :func:`ptychobench.stitch.synchronise_phases`); recorded in the metadata
    fast : on CPU, channels-last convolutions (the model is restored afterwards); ``False``
        runs the plain eager path, for comparison (``benchmarks/infer.py --compare-eager``) and
        as a fallback
    compile : run ``model.predict`` through ``torch.compile`` (one graph at ``batch_size``; eager
        fallback with a warning when it cannot be built; the gs2 shared mode's per-pattern
        decoding stays eager). Off by default: on CPU channels-last beats it (2.0× vs 1.5×) and
        the first chunk pays the compilation (tens of seconds). Recorded as ``compiled``.
    amp : bf16 autocast of the network (on the inference device; outputs within ~1e-2 of fp32,
        patches, weights and stitching stay complex64/float32). Recorded as ``amp``.
    debug_limit : baseline only — run on the first K flattened patterns
    debug_dir : baseline only — write ``baseline_debug.npz`` and ``baseline_debug_stats.json``

    Returns
    -------
    Reconstruction; raises :class:`InferenceError` for an all-zero or non-finite image (after the
    debug artifacts are written).
    """
    stitch_weighting = validate_weighting(stitch_weighting)
    phase_sync = validate_phase_sync(phase_sync)
    kind = model.kind
    name = arm or ("PtychoPINN" if kind == "pinn" else "Baseline")
    N = ds.N
    if train_stats is not None:
        guard = check_input_shift(train_stats, ds, name)
    else:
        guard = {"inference": data_statistics(ds)}
    M = crop_size_M if crop_size_M is not None else max(2, 2 * round(N / 8))
    shape = ds.frame_shape
    dev = _resolve_device(device)
    model = model.to(dev).eval()
    gridsize = 1 if kind == "baseline" else int(model.config.gridsize)
    groups = dataset_groups(ds, gridsize, neighbor_count=neighbor_count)
    coords = ds.coords
    t0 = time.perf_counter()
    with _fast_path(model, dev, fast):
        debug: dict[str, Any] = {}
        if kind == "baseline":
            members = groups.reshape(-1)
            if debug_limit is not None:
                members = members[: int(debug_limit)]
            inputs = prepare_baseline_inference_data(
                ds.diffraction[members][:, None], coords[members][:, None, :]
            )
            stitcher = Stitcher(
                shape,
                N,
                M,
                origin=(inputs.centre, inputs.centre),
                weighting=stitch_weighting,
                probe=ds.probeGuess if stitch_weighting == "probe" else None,
                phase_sync=phase_sync,
                device=dev,
            )
            outs = []
            predict = _Predictor(model, batch_size, compile, dev.type if amp else None)
            for start in range(0, len(members), batch_size):
                x = _to_device(inputs.patterns[start : start + batch_size], dev)
                zeros = torch.zeros((x.shape[0], 1, 2), dtype=torch.float32, device=dev)
                patches = predict(x, zeros)
                stitcher.add(patches, inputs.centred[start : start + batch_size])
                if debug_dir is not None:
                    outs.append(patches.cpu().numpy())
            n_used = len(members)
            debug = {"inputs": inputs, "outputs": np.concatenate(outs) if outs else None}
        else:
            centres = group_centres(coords, groups)
            offsets = group_offsets(coords, groups).astype(np.float32)
            model = _fit_canvas(model, offsets, dev)
            predict = _Predictor(model, batch_size, compile, dev.type if amp else None)
            probe_weighted = stitch_weighting == "probe"
            gs2_probe = probe_weighted and gridsize > 1
            merge_kw: dict[str, Any] = {}
            if gs2_probe:
                # merge with |P|² weights and stitch each group's whole canvas (side S, centred on
                # the group centre: members up to canvas_pad from it keep their whole window) with
                # its Σ-weight map as the per-patch weight; no merge threshold, the stitcher
                # thresholds the total weight of all groups
                S = N + 2 * int(model.config.canvas_pad)
                # every add() passes its weight maps
                stitcher = Stitcher(shape, S, S, phase_sync=phase_sync, device=dev)
                merge_kw = {
                    "weighting": "probe",
                    "return_weight": True,
                    "min_weight": 0.0,
                    "full_canvas": True,
                }
            else:
                stitcher = Stitcher(
                    shape,
                    N,
                    M,
                    weighting=stitch_weighting,
                    probe=model.probe.detach() if probe_weighted else None,
                    phase_sync=phase_sync,
                    device=dev,
                )
            # shared channel mode: a member's patch depends on its own pattern only, and
            # neighbouring groups share members, so each distinct pattern of a chunk is decoded once
            shared = gridsize > 1 and getattr(model.config, "channel_mode", "joint") == "shared"
            for start in range(0, len(groups), batch_size):
                g = groups[start : start + batch_size]
                off = _to_device(offsets[start : start + batch_size], dev)
                if shared:
                    uniq, inv = np.unique(g, return_inverse=True)
                    with predict.autocast():
                        decoded = model.decode_patterns(_to_device(ds.diffraction[uniq], dev))
                    members = _to_device(inv.reshape(g.shape), dev)
                    out = model.predict_from_patches(decoded[members], off, **merge_kw)
                else:
                    out = predict(_to_device(ds.diffraction[g], dev), off, **merge_kw)
                weights = None  # flat, and probe at gs1: the stitcher's own weight
                if gs2_probe:
                    out, weights = out[0], out[1]
                stitcher.add(out, centres[start : start + batch_size], weights)
            n_used = int(groups.size)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    image, coverage = stitcher.result()
    meta = {
        "arm": name,
        "kind": kind,
        "gridsize": gridsize,
        "seconds": seconds,
        "infer_s": seconds,
        "refine_s": 0.0,
        "n_patterns": n_used,
        "n_groups": int(len(groups)),
        "crop_size_M": M,
        "stitch_weighting": stitch_weighting,
        "phase_sync": phase_sync,
        "fast": bool(fast),
        "compiled": predict.compiled,
        "amp": "bf16" if amp else None,
        "device": str(dev),
        "data": data_source,
        "input_guard": guard,
        "debug_limited": debug_limit is not None,
        "versions": {"torch": torch.__version__},
        "geometry": ds.metadata.get("geometry"),
    }
    if kind == "baseline" and debug_dir is not None:
        _write_baseline_debug(Path(debug_dir), debug, image, seconds)
    if not np.isfinite(image).all() or not np.any(image):
        what = "non-finite" if not np.isfinite(image).all() else "all zeros"
        stats = guard.get("inference", {})
        raise InferenceError(
            f"{name}: stitched output is {what} (model {kind} gs{gridsize}, data {data_source}, "
            f"{n_used} patterns, mean photons {stats.get('mean_photons', float('nan')):.4g}, "
            f"positions mean {stats.get('position_mean')})"
        )
    return Reconstruction(image, coverage, meta)


def _fit_canvas(model: torch.nn.Module, offsets: np.ndarray, dev: torch.device) -> torch.nn.Module:
    """A PINN whose gs2 canvas holds these offsets (the pad does not change the weights)."""
    pad = int(getattr(model.config, "canvas_pad", 0))
    need = int(math.ceil(float(np.abs(offsets).max()))) if offsets.size else 0
    if model.config.gridsize == 1 or need <= pad:
        return model
    from ptychobench.models import build_model

    log.info("PINN: test groups need canvas_pad %d > %d; rebuilding the canvas", need + 2, pad)
    cfg = model.config.model_dump(mode="json") | {"canvas_pad": need + 2}
    state = model.state_dict()
    bigger = build_model(cfg, state["probe"].detach().cpu())
    bigger.load_state_dict(state)
    return bigger.to(dev).eval()


def _write_baseline_debug(
    d: Path, debug: dict[str, Any], image: np.ndarray, seconds: float
) -> None:
    d.mkdir(parents=True, exist_ok=True)
    inputs: BaselineInputs = debug["inputs"]
    outputs = debug["outputs"]
    arrays = {
        "inputs": inputs.patterns,
        "positions_raw": inputs.positions,
        "positions_centred": inputs.centred,
        "outputs": outputs if outputs is not None else np.zeros((0,), np.complex64),
        "stitched": image,
    }
    with atomic_open(d / "baseline_debug.npz", "wb") as fh:
        np.savez(fh, **arrays)
    out = outputs if outputs is not None else np.zeros((0,), np.complex64)
    stats = {
        "input": _describe(inputs.patterns),
        "offsets_raw": _describe(inputs.positions),
        "offsets_centred": _describe(inputs.centred),
        "output_amplitude": _describe(np.abs(out)),
        "output_phase": _describe(np.angle(out)),
        "position_stats": inputs.stats,
        "inference_seconds": seconds,
    }
    with atomic_open(d / "baseline_debug_stats.json", "w") as fh:
        json.dump(stats, fh, indent=2, sort_keys=True)
