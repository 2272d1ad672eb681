"""Geometric overlap metrics of a scan (SPEC §4). Informational only: never gate a run on them.

``D`` is the probe's effective diameter in object pixels and R = D/2. The overlap fraction of two
discs of diameter D whose centres are d apart is

    f(d) = [2R²·acos(d/2R) − (d/2)·sqrt(4R² − d²)] / (πR²)   for d < D, else 0,

so f(0) = 1, f(R) ≈ 0.391 and f(D) = 0.

* Metric 1 (gridsize 2 only): mean over group members of the mean f to the other members of the
  same group.
* Metric 2: over unique positions, mean f to the K nearest other positions.
* Metric 3: over group centres, mean f to all other centres closer than D (0 for a centre with
  none), averaged over centres.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from ptychobench.data.dataset import PtychoDataset
from ptychobench.data.grouping import group_centres
from ptychobench.data.io import atomic_open

__all__ = [
    "disc_overlap",
    "metric_centres",
    "metric_group",
    "metric_neighbors",
    "overlap_report",
    "write_overlap_json",
]


def _check_D(D: float) -> float:
    D = float(D)
    if not (math.isfinite(D) and D > 0):
        raise ValueError(f"D (probe effective diameter): expected a finite value > 0, found {D}")
    return D


def disc_overlap(d: np.ndarray | float, D: float) -> np.ndarray:
    """Overlap fraction of two discs of diameter ``D`` at centre distance ``d``.

    Parameters
    ----------
    d : array_like, any shape
        Centre distances (pixels, ≥ 0; the absolute value is used).
    D : float
        Disc diameter (pixels, > 0).

    Returns
    -------
    ndarray, same shape as ``d``, float64
        f in [0, 1]; 1 at d = 0, 0 for d ≥ D.
    """
    D = _check_D(D)
    R = D / 2.0
    d = np.abs(np.asarray(d, dtype=np.float64))
    inside = d < D
    dc = np.where(inside, d, 0.0)
    f = (2.0 * R * R * np.arccos(dc / (2.0 * R)) - (dc / 2.0) * np.sqrt(4.0 * R * R - dc * dc)) / (
        math.pi * R * R
    )
    return np.where(inside, np.clip(f, 0.0, 1.0), 0.0)


def metric_group(coords: np.ndarray, groups: np.ndarray | None, D: float) -> float | None:
    """Metric 1: mean over group members of the mean overlap with the other members.

    Parameters
    ----------
    coords : (n, 2) float
        (x, y) positions.
    groups : (n_groups, C) int or None
    D : float
        Probe effective diameter (pixels).

    Returns
    -------
    float or None
        None when there are no groups or C = 1 (gridsize 1).
    """
    D = _check_D(D)
    if groups is None:
        return None
    groups = np.asarray(groups)
    if groups.ndim != 2 or groups.shape[1] < 2 or groups.shape[0] == 0:
        return None
    C = groups.shape[1]
    members = np.asarray(coords, dtype=np.float64)[groups]  # (G, C, 2)
    dist = np.linalg.norm(members[:, :, None, :] - members[:, None, :, :], axis=-1)  # (G, C, C)
    f = disc_overlap(dist, D)
    per_member = (f.sum(axis=2) - np.diagonal(f, axis1=1, axis2=2)) / (C - 1)
    return float(per_member.mean())


def metric_neighbors(coords: np.ndarray, D: float, k: int = 4) -> float:
    """Metric 2: over unique positions, mean overlap with the k nearest other positions.

    Parameters
    ----------
    coords : (n, 2) float
        (x, y) positions; exact duplicates are counted once.
    D : float
        Probe effective diameter (pixels).
    k : int, default 4
        Neighbours per position; capped at (number of unique positions − 1).

    Returns
    -------
    float
        0.0 when fewer than two unique positions exist.
    """
    D = _check_D(D)
    if k < 1:
        raise ValueError(f"k: expected >= 1 neighbours, found {k}")
    unique = np.unique(np.asarray(coords, dtype=np.float64).reshape(-1, 2), axis=0)
    m = unique.shape[0]
    if m < 2:
        return 0.0
    k_eff = min(int(k), m - 1)
    dist, _ = cKDTree(unique).query(unique, k=k_eff + 1)
    dist = np.asarray(dist).reshape(m, k_eff + 1)[:, 1:]  # column 0 is the point itself
    return float(disc_overlap(dist, D).mean())


def metric_centres(centres: np.ndarray, D: float) -> float:
    """Metric 3: over centres, mean overlap with all other centres closer than D (0 if none).

    Parameters
    ----------
    centres : (m, 2) float
        Group centres (x, y).
    D : float
        Probe effective diameter (pixels).

    Returns
    -------
    float
        Mean over centres; 0.0 for fewer than two centres.
    """
    D = _check_D(D)
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    m = centres.shape[0]
    if m < 2:
        return 0.0
    tree = cKDTree(centres)
    pairs = tree.query_pairs(D, output_type="ndarray")  # i < j, distance <= D
    if pairs.size == 0:
        return 0.0
    i, j = pairs[:, 0], pairs[:, 1]
    d = np.linalg.norm(centres[i] - centres[j], axis=1)
    close = d < D
    i, j, f = i[close], j[close], disc_overlap(d[close], D)
    total = np.bincount(i, weights=f, minlength=m) + np.bincount(j, weights=f, minlength=m)
    count = np.bincount(i, minlength=m) + np.bincount(j, minlength=m)
    per_centre = np.divide(total, count, out=np.zeros(m), where=count > 0)
    return float(per_centre.mean())


def overlap_report(ds: PtychoDataset, D: float, neighbor_count: int = 4) -> dict[str, Any]:
    """All three overlap metrics of a dataset or view, JSON-ready.

    Positions used are the members of ``ds.groups`` when present (a view), else all positions
    (treated as gridsize-1 groups).

    Parameters
    ----------
    ds : PtychoDataset
    D : float
        Probe effective diameter (pixels).
    neighbor_count : int, default 4
        K for Metric 2.

    Returns
    -------
    dict
        ``{"D", "gridsize", "neighbor_count", "n_positions", "n_unique_positions", "n_groups",
        "metric_1_group" (None for gs1), "metric_2_neighbors", "metric_3_centres"}``.
    """
    D = _check_D(D)
    coords = ds.coords
    if ds.groups is None:
        groups = np.arange(ds.n, dtype=np.int64)[:, None]
    else:
        groups = np.asarray(ds.groups, dtype=np.int64)
    used = coords[np.unique(groups)]
    C = int(groups.shape[1])
    gridsize = math.isqrt(C)
    return {
        "D": D,
        "gridsize": gridsize,
        "neighbor_count": int(neighbor_count),
        "n_positions": int(used.shape[0]),
        "n_unique_positions": int(np.unique(used, axis=0).shape[0]),
        "n_groups": int(groups.shape[0]),
        "metric_1_group": metric_group(coords, groups, D),
        "metric_2_neighbors": metric_neighbors(used, D, k=neighbor_count),
        "metric_3_centres": metric_centres(group_centres(coords, groups), D),
    }


def write_overlap_json(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Atomically write an overlap report as indented, key-sorted JSON.

    Parameters
    ----------
    report : dict
        Output of :func:`overlap_report` (plus any extra JSON-ready keys).
    path : path-like
    """
    text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"
    with atomic_open(path, "w") as fh:
        fh.write(text)
