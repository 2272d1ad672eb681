"""Subsampling and grouping of scan positions into views (SPEC §4).

A *view* is (gridsize, s_img, n_groups): a seeded subsample of the positions, then groups of
C = gridsize² patterns. For gridsize 1 a group is one pattern; for gridsize 2 each group is built
around a seed position from C of its K nearest neighbours (the seed itself excluded, as in the
reference "sample-then-group" algorithm), chosen uniformly without replacement.

Sign convention (used everywhere in ptychobench)
------------------------------------------------
Group **centre** = mean of the member coordinates. Group **offsets** = member − centre, in
object pixels, ordered (x, y); they are zero-mean within every group by construction, and all
zero for gridsize 1. (The reference used the opposite sign, −(member − centre); we do not.)
"""

from __future__ import annotations

import logging
import math
import numbers

import numpy as np
from scipy.spatial import cKDTree

from ptychobench.data.dataset import DatasetError, PtychoDataset, validate

__all__ = ["group_centres", "group_offsets", "make_groups", "make_view", "n_kept", "subsample"]

log = logging.getLogger(__name__)

GRIDSIZES = (1, 2)


def n_kept(s_img: float, n: int) -> int:
    """round(s_img·n) with halves rounded up, at least 1."""
    return max(1, int(math.floor(s_img * n + 0.5)))


def subsample(ds: PtychoDataset, s_img: float, seed: int) -> PtychoDataset:
    """Keep a seeded random subset of round(s_img·n) ≥ 1 scan positions (sorted indices).

    Parameters
    ----------
    ds : PtychoDataset
        n ≥ 1 positions.
    s_img : float
        Fraction to keep, 0 < s_img ≤ 1 (halves round up: 0.5·3 → 2).
    seed : int
        Seed of ``np.random.default_rng``; same seed ⇒ same subset.

    Returns
    -------
    PtychoDataset
        round(s_img·n) positions in their original order; ``groups`` dropped; the operation
        ``{"op": "subsample", "s_img", "seed", "n_before", "n_after"}`` appended to
        ``metadata["transformations"]``.

    Raises
    ------
    ValueError
        If s_img is outside (0, 1].
    DatasetError
        If the dataset has no positions.
    """
    if not (isinstance(s_img, numbers.Real) and 0.0 < float(s_img) <= 1.0):
        raise ValueError(f"s_img: expected 0 < s_img <= 1, found {s_img!r}")
    n = ds.n
    if n < 1:
        raise DatasetError("key 'diffraction': expected at least 1 pattern to subsample, found n=0")
    k = n_kept(float(s_img), n)
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(n, size=k, replace=False))
    record = {
        "op": "subsample",
        "s_img": float(s_img),
        "seed": int(seed),
        "n_before": n,
        "n_after": k,
    }
    return ds.select(index, transformation=record)


def make_groups(
    coords: np.ndarray,
    gridsize: int,
    n_groups: int | None = None,
    neighbor_count: int = 4,
    seed: int = 0,
) -> np.ndarray:
    """Group scan positions: one position per group (gs1) or C = 4 nearby positions (gs2).

    Parameters
    ----------
    coords : (n, 2) float
        Scan positions (x, y).
    gridsize : {1, 2}
        C = gridsize² patterns per group.
    n_groups : int, optional
        Number of groups. None: one group per position (gs1: every position in order; gs2: every
        position is a seed). Otherwise a seeded sample of distinct seed positions (sorted);
        ``n_groups > n`` is an error (no oversampling).
    neighbor_count : int, default 4
        K: members are drawn among the K nearest neighbours of the seed (the seed excluded).
        Capped at n − 1 (with a warning) when fewer positions exist. Ignored for gs1.
    seed : int, default 0
        Seed of ``np.random.default_rng`` for seed sampling and member choice.

    Returns
    -------
    (n_groups, C) int64
        Indices into ``coords``. For gs2, row b holds C distinct neighbours of seed b in a
        random order.

    Raises
    ------
    ValueError
        gridsize not in {1, 2}; K < C; n < C + 1; n_groups < 1 or > n.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords: expected shape (n, 2), found {coords.shape}")
    if gridsize not in GRIDSIZES:
        raise ValueError(f"gridsize: expected one of {GRIDSIZES}, found {gridsize!r}")
    n = coords.shape[0]
    C = gridsize * gridsize
    if n_groups is not None and not (1 <= n_groups <= n):
        raise ValueError(
            f"n_groups: expected 1 <= n_groups <= n = {n} positions, found {n_groups} "
            "(oversampling is not supported)"
        )
    rng = np.random.default_rng(seed)
    if n_groups is None:
        seeds = np.arange(n)
    else:
        seeds = np.sort(rng.choice(n, size=n_groups, replace=False))
    if C == 1:
        if n < 1:
            raise ValueError("coords: expected at least 1 position for gridsize 1, found n=0")
        return seeds.astype(np.int64)[:, None]

    K = int(neighbor_count)
    if K < C:
        raise ValueError(f"neighbor_count K={K} < C={C} patterns per group")
    if n < C + 1:
        raise ValueError(
            f"coords: gridsize {gridsize} needs at least C + 1 = {C + 1} positions "
            f"(fewer patterns than a grouping needs), found n={n}"
        )
    if K > n - 1:
        log.warning("neighbor_count K=%d capped to n - 1 = %d positions", K, n - 1)
        K = n - 1
    tree = cKDTree(coords)
    _, idx = tree.query(coords[seeds], k=K + 1)
    idx = np.asarray(idx, dtype=np.int64).reshape(len(seeds), K + 1)
    # Drop the seed itself. With coincident positions the seed may tie with (or be displaced by)
    # a duplicate; then drop the farthest of the K + 1 instead, keeping K neighbours.
    is_self = idx == seeds[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    first = np.argmax(is_self, axis=1)
    keep = np.ones_like(is_self)
    keep[np.arange(len(seeds)), first] = False
    neighbours = idx[keep].reshape(len(seeds), K)
    choice = np.argsort(rng.random((len(seeds), K)), axis=1)[:, :C]
    return np.take_along_axis(neighbours, choice, axis=1).astype(np.int64)


def group_centres(coords: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Group centres = mean of member coordinates.

    Parameters
    ----------
    coords : (n, 2) float
        (x, y) positions.
    groups : (n_groups, C) int

    Returns
    -------
    (n_groups, 2) float64
    """
    return np.asarray(coords, dtype=np.float64)[np.asarray(groups)].mean(axis=1)


def group_offsets(coords: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per-member offsets = member − centre (x, y, pixels); zero-mean within each group.

    Parameters
    ----------
    coords : (n, 2) float
    groups : (n_groups, C) int

    Returns
    -------
    (n_groups, C, 2) float64
    """
    members = np.asarray(coords, dtype=np.float64)[np.asarray(groups)]
    return members - members.mean(axis=1, keepdims=True)


def make_view(
    ds: PtychoDataset,
    gridsize: int,
    s_img: float = 1.0,
    n_groups: int | None = None,
    neighbor_count: int = 4,
    seed: int = 0,
) -> PtychoDataset:
    """Subsample then group: the dataset of one view (SPEC §4).

    Parameters
    ----------
    ds : PtychoDataset
    gridsize : {1, 2}
    s_img : float, default 1.0
        Fraction of positions kept (see :func:`subsample`).
    n_groups : int, optional
        Groups to form (see :func:`make_groups`); None = one per kept position.
    neighbor_count : int, default 4
        K nearest neighbours for gs2.
    seed : int, default 0
        Seeds both the subsample and the grouping.

    Returns
    -------
    PtychoDataset
        The subsampled dataset with ``groups`` (n_groups, C) int64 set; the view is recorded as
        ``metadata["view"]`` and appended to ``metadata["transformations"]``.

    Raises
    ------
    ValueError, DatasetError
        Bad parameters, or fewer patterns after subsampling than the grouping needs.
    """
    if gridsize not in GRIDSIZES:
        raise ValueError(f"gridsize: expected one of {GRIDSIZES}, found {gridsize!r}")
    C = gridsize * gridsize
    sub = subsample(ds, s_img, seed)
    validate(sub, min_patterns=1 if C == 1 else C + 1)
    groups = make_groups(sub.coords, gridsize, n_groups, neighbor_count, seed)
    record = {
        "op": "view",
        "gridsize": int(gridsize),
        "C": C,
        "s_img": float(s_img),
        "n_groups_requested": None if n_groups is None else int(n_groups),
        "n_groups": int(groups.shape[0]),
        "neighbor_count": int(neighbor_count),
        "seed": int(seed),
        "n_positions": sub.n,
        "offsets": "member - centre, pixels, (x, y)",
    }
    sub.groups = groups
    sub.metadata.setdefault("transformations", []).append(record)
    sub.metadata["view"] = dict(record)
    return sub
