"""From a dataset to a trained bundle: grouping, data-derived scales, seeded model, training.

This is what ``ptychobench train`` and the study call; :mod:`ptychobench.train` is the loop.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ptychobench.data.dataset import DatasetError, PtychoDataset, photons_per_pattern
from ptychobench.data.grouping import group_offsets
from ptychobench.infer import data_statistics, dataset_groups
from ptychobench.models import build_model
from ptychobench.stitch import validate_weighting
from ptychobench.train import TrainConfig, TrainResult, seeded_build, train

__all__ = ["fit", "model_config_for", "training_arrays"]


def training_arrays(
    ds: PtychoDataset,
    gridsize: int,
    *,
    neighbor_count: int = 4,
    seed: int = 0,
    need_Y: bool = False,
) -> dict[str, np.ndarray]:
    """Grouped arrays for :func:`ptychobench.train.train`.

    Returns ``diffraction`` (G, C, N, N) float32, ``offsets`` (G, C, 2) float32 (member − centre,
    x, y px) and, when ``ds.Y`` exists, ``Y`` (G, C, N, N) complex64.
    """
    groups = dataset_groups(ds, gridsize, neighbor_count=neighbor_count, seed=seed)
    arrays = {
        "diffraction": np.ascontiguousarray(ds.diffraction[groups], dtype=np.float32),
        "offsets": group_offsets(ds.coords, groups).astype(np.float32),
    }
    if ds.Y is not None:
        arrays["Y"] = np.ascontiguousarray(ds.Y[groups], dtype=np.complex64)
    elif need_Y:
        raise DatasetError(
            "baseline training: key 'Y': expected ground-truth object patches (n, N, N) complex, "
            "found none (simulate writes them)"
        )
    return arrays


def model_config_for(
    kind: Literal["pinn", "baseline"],
    ds: PtychoDataset,
    gridsize: int,
    *,
    n_filters_scale: float = 1.0,
    amplitude_max: float = 1.2,
    loss: str = "poisson",
    max_offset: float = 0.0,
    probe_trainable: bool = False,
) -> dict[str, Any]:
    """Model config with data-derived scales.

    ``input_scale`` makes the encoder see ``mean Σ x² = (N/2)²``; ``intensity_scale`` makes the
    PINN's initial prediction (decoder output ≈ amplitude_max/2 on the central N/2 window) carry
    the measured mean photons per pattern.
    """
    N = ds.N
    photons = float(photons_per_pattern(ds.diffraction).mean())
    if not photons > 0:
        raise DatasetError(f"diffraction: expected photons > 0, found mean {photons}")
    window = np.zeros((N, N), dtype=bool)
    window[N // 4 : 3 * N // 4, N // 4 : 3 * N // 4] = True
    probe_window = float(np.square(np.abs(ds.probeGuess[window]), dtype=np.float64).sum())
    a0 = amplitude_max / 2
    return {
        "kind": kind,
        "N": N,
        "gridsize": gridsize,
        "n_filters_scale": n_filters_scale,
        "amplitude_max": amplitude_max,
        "input_scale": math.sqrt((N / 2) ** 2 / photons),
        "intensity_scale": math.sqrt(photons / (a0 * a0 * probe_window)),
        "probe_trainable": probe_trainable,
        "loss": loss,
        "canvas_pad": max(2, int(math.ceil(max_offset)) + 2),
    }


def fit(
    ds: PtychoDataset,
    kind: Literal["pinn", "baseline"],
    out_dir: str | Path,
    *,
    gridsize: int = 1,
    train_config: TrainConfig | dict | None = None,
    n_filters_scale: float = 1.0,
    loss: str = "poisson",
    neighbor_count: int = 4,
    resume: bool = False,
    data_source: str = "dataset",
    progress: bool | None = None,
    channel_mode: Literal["shared", "joint"] = "shared",
    merge_weighting: Literal["flat", "probe"] = "flat",
) -> TrainResult:
    """Train a PtychoPINN or Baseline on ``ds`` and write its bundle to ``out_dir``.

    The baseline is trained on single patterns (gs1 groups of ``ds``'s positions, or the view's
    groups' unique members); the PINN on groups of ``gridsize``. Model initialisation is seeded with
    the training seed.

    ``merge_weighting`` (PINN gs2): weight of a member pixel in the group merge, ``"flat"`` (the
    decoder's window) or ``"probe"`` (window · |P|²/max|P|²); stored in the bundle's model config.
    The baseline ignores it (the name is still checked).
    """
    validate_weighting(merge_weighting, "merge weighting")
    cfg = TrainConfig.model_validate(train_config or {})
    g = gridsize if kind == "pinn" else 1
    if kind == "baseline" and ds.groups is not None and ds.groups.shape[1] > 1:
        # a gs2 view lists most positions in several groups; the baseline sees single patterns,
        # so it trains on each of the view's positions once instead of C times
        ds = dataclasses.replace(ds, groups=np.unique(ds.groups)[:, None])
    arrays = training_arrays(
        ds, g, neighbor_count=neighbor_count, seed=cfg.seed, need_Y=kind == "baseline"
    )
    max_offset = float(np.abs(arrays["offsets"]).max()) if arrays["offsets"].size else 0.0
    mcfg = model_config_for(
        kind,
        ds,
        gridsize if kind == "pinn" else 1,
        n_filters_scale=n_filters_scale,
        loss=loss,
        max_offset=max_offset,
    )
    if kind == "pinn":
        mcfg["channel_mode"] = channel_mode
        mcfg["merge_weighting"] = merge_weighting
    probe = torch.from_numpy(ds.probeGuess.astype(np.complex64))
    model = seeded_build(lambda: build_model(mcfg, probe), cfg.seed)
    if hasattr(model, "set_input_statistics"):
        model.set_input_statistics(torch.from_numpy(arrays["diffraction"]))
    stats = data_statistics(ds)
    extra = {**stats, "source": data_source, "train_gridsize": g}
    return train(model, arrays, cfg, out_dir, resume=resume, extra_config=extra, progress=progress)
