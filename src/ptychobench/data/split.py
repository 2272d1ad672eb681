"""Spatial train/test split of a scan (SPEC §4).

The split point along the chosen axis is ``min + fraction·(max − min)`` of that coordinate;
positions strictly below it form the *train* half, positions at or above it the *test* half.
Per-scan arrays (diffraction, coordinates, ``Y``) are masked; probe and object are copied into
both halves; ``groups`` are dropped (they index the parent). Each half records the split in
``metadata["transformations"]`` and as ``metadata["split"]``.
"""

from __future__ import annotations

import numbers

import numpy as np

from ptychobench.data.dataset import DatasetError, PtychoDataset

__all__ = ["split", "split_value"]

_AXES = {"x": "xcoords", "y": "ycoords"}


def _check(axis: str, fraction: float) -> None:
    if axis not in _AXES:
        raise ValueError(f"split axis: expected 'x' or 'y', found {axis!r}")
    if not (isinstance(fraction, numbers.Real) and 0.0 < float(fraction) < 1.0):
        raise ValueError(f"split fraction: expected 0 < fraction < 1, found {fraction!r}")


def split_value(coord: np.ndarray, fraction: float) -> float:
    """Split point ``min + fraction·(max − min)`` of a coordinate array.

    Parameters
    ----------
    coord : (n,) float
        Coordinate values along the split axis.
    fraction : float
        In (0, 1).

    Returns
    -------
    float
    """
    lo, hi = float(np.min(coord)), float(np.max(coord))
    return lo + float(fraction) * (hi - lo)


def split(
    ds: PtychoDataset, axis: str = "y", fraction: float = 0.5
) -> tuple[PtychoDataset, PtychoDataset]:
    """Split a dataset spatially into (train, test) halves.

    Parameters
    ----------
    ds : PtychoDataset
        Dataset with n ≥ 2 positions.
    axis : {"y", "x"}, default "y"
        Coordinate to split on (``y`` = row, ``x`` = column).
    fraction : float, default 0.5
        Position of the split point between the minimum (0) and maximum (1) coordinate.

    Returns
    -------
    train, test : PtychoDataset
        ``train`` holds positions with coordinate < split value, ``test`` those ≥ it. Each
        half's ``metadata["transformations"]`` gains ``{"op": "split", "axis", "fraction",
        "split_value", "half", "n_parent", "n_train", "n_test"}`` (also stored as
        ``metadata["split"]``).

    Raises
    ------
    ValueError
        Bad ``axis`` or ``fraction``.
    DatasetError
        If either half would be empty (e.g. all positions share the coordinate).
    """
    _check(axis, fraction)
    coord = np.asarray(getattr(ds, _AXES[axis]))
    if coord.size == 0:
        raise DatasetError(f"key '{_AXES[axis]}': expected positions to split, found n=0")
    value = split_value(coord, fraction)
    train_mask = coord < value
    test_mask = ~train_mask
    n_train, n_test = int(train_mask.sum()), int(test_mask.sum())
    if n_train == 0 or n_test == 0:
        empty = "train" if n_train == 0 else "test"
        raise DatasetError(
            f"key '{_AXES[axis]}': expected positions on both sides of the split value "
            f"{value:g} (axis {axis}, fraction {fraction}), found an empty {empty} half "
            f"(coordinate range [{coord.min():g}, {coord.max():g}], n={coord.size})"
        )
    halves = []
    for half, mask in (("train", train_mask), ("test", test_mask)):
        record = {
            "op": "split",
            "axis": axis,
            "fraction": float(fraction),
            "split_value": value,
            "half": half,
            "rule": "train: coord < split_value; test: coord >= split_value",
            "n_parent": int(coord.size),
            "n_train": n_train,
            "n_test": n_test,
        }
        sub = ds.select(np.flatnonzero(mask), transformation=record)
        sub.metadata["split"] = dict(record)
        halves.append(sub)
    return halves[0], halves[1]
