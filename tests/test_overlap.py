"""Tests of the geometric overlap metrics (SPEC §4)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ptychobench.data.dataset import PtychoDataset
from ptychobench.data.grouping import make_groups
from ptychobench.data.overlap import (
    disc_overlap,
    metric_centres,
    metric_group,
    metric_neighbors,
    overlap_report,
    write_overlap_json,
)


def raster(nx: int, ny: int, step: float) -> np.ndarray:
    xx, yy = np.meshgrid(np.arange(nx) * step, np.arange(ny) * step)
    return np.stack([xx.ravel(), yy.ravel()], axis=-1)


def test_disc_overlap_values() -> None:
    D = 20.0
    assert disc_overlap(0.0, D) == pytest.approx(1.0)
    assert 0.39 < float(disc_overlap(D / 2, D)) < 0.40
    assert float(disc_overlap(D / 2, D)) == pytest.approx(
        (2 * math.pi / 3 - math.sqrt(3) / 2) / math.pi
    )
    assert disc_overlap(D, D) == 0.0 and disc_overlap(1.5 * D, D) == 0.0
    d = np.linspace(0, 1.2 * D, 200).reshape(10, 20)
    f = disc_overlap(d, D)
    assert f.shape == (10, 20)
    assert (np.diff(f.ravel()) <= 1e-15).all() and f.min() >= 0 and f.max() <= 1
    with pytest.raises(ValueError, match="D"):
        disc_overlap(1.0, 0.0)


def test_disc_overlap_matches_numeric_area() -> None:
    D, d = 10.0, 3.7
    R = D / 2
    g = np.linspace(-R - d, R + d, 2001)
    xx, yy = np.meshgrid(g, g)
    inside = (xx**2 + yy**2 < R**2) & ((xx - d) ** 2 + yy**2 < R**2)
    area = inside.sum() * (g[1] - g[0]) ** 2
    assert float(disc_overlap(d, D)) == pytest.approx(area / (math.pi * R**2), abs=2e-3)


def test_metric_neighbors_raster() -> None:
    step, D = 10.0, 13.0  # D < step·√2: only the 4 axis neighbours overlap
    nx, ny = 7, 5
    coords = raster(nx, ny, step)
    n_axis_pairs = nx * (ny - 1) + ny * (nx - 1)
    expected = float(disc_overlap(step, D)) * (2 * n_axis_pairs) / (4 * nx * ny)
    assert metric_neighbors(coords, D, k=4) == pytest.approx(expected)
    # two positions one step apart: each sees exactly f(step)
    assert metric_neighbors(coords[[0, 1]], D, k=4) == pytest.approx(float(disc_overlap(step, D)))


def test_metric_neighbors_large_raster_tends_to_f_step() -> None:
    step, D = 10.0, 25.0
    coords = raster(40, 40, step)
    m = metric_neighbors(coords, D, k=4)
    assert m == pytest.approx(float(disc_overlap(step, D)), rel=0.06)


def test_metric_neighbors_dedupes_and_small_n() -> None:
    coords = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0]])
    assert metric_neighbors(coords, 10.0, k=4) == pytest.approx(float(disc_overlap(5.0, 10.0)))
    assert metric_neighbors(coords[:2], 10.0) == 0.0


def test_metric_group() -> None:
    coords = raster(2, 2, 6.0)  # one square group, side 6
    groups = np.array([[0, 1, 2, 3]])
    D = 20.0
    expected = (2 * float(disc_overlap(6.0, D)) + float(disc_overlap(6.0 * math.sqrt(2), D))) / 3
    assert metric_group(coords, groups, D) == pytest.approx(expected)
    assert metric_group(coords, np.arange(4)[:, None], D) is None
    assert metric_group(coords, None, D) is None


def test_metric_centres() -> None:
    far = raster(4, 4, 100.0)
    assert metric_centres(far, 20.0) == 0.0
    pair_and_far = np.array([[0.0, 0.0], [5.0, 0.0], [500.0, 500.0]])
    f = float(disc_overlap(5.0, 20.0))
    assert metric_centres(pair_and_far, 20.0) == pytest.approx((f + f + 0.0) / 3)
    three = np.array([[0.0, 0.0], [5.0, 0.0], [10.0, 0.0]])
    f5, f10 = float(disc_overlap(5.0, 12.0)), float(disc_overlap(10.0, 12.0))
    expected = ((f5 + f10) / 2 + f5 + (f5 + f10) / 2) / 3
    assert metric_centres(three, 12.0) == pytest.approx(expected)
    assert metric_centres(far[:1], 20.0) == 0.0


def _ds(coords: np.ndarray, groups: np.ndarray | None = None) -> PtychoDataset:
    n = len(coords)
    return PtychoDataset(
        diffraction=np.zeros((n, 4, 4), np.float32),
        probeGuess=np.ones((4, 4), np.complex64),
        xcoords=coords[:, 0].copy(),
        ycoords=coords[:, 1].copy(),
        groups=groups,
    )


def test_overlap_report_gs1_and_gs2(tmp_path: Path) -> None:
    coords = raster(6, 6, 8.0) + 10
    D = 16.0
    r1 = overlap_report(_ds(coords), D)
    assert r1["gridsize"] == 1 and r1["metric_1_group"] is None
    assert r1["n_positions"] == 36 and r1["n_unique_positions"] == 36 and r1["n_groups"] == 36
    assert r1["metric_2_neighbors"] == pytest.approx(metric_neighbors(coords, D))
    assert r1["metric_3_centres"] == pytest.approx(metric_centres(coords, D))
    g = make_groups(coords, 2, n_groups=10, neighbor_count=4, seed=0)
    r2 = overlap_report(_ds(coords, g), D)
    assert r2["gridsize"] == 2 and r2["n_groups"] == 10
    assert 0 < r2["metric_1_group"] <= 1
    write_overlap_json(r2, tmp_path / "overlap_test.json")
    assert json.loads((tmp_path / "overlap_test.json").read_text()) == r2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlap_test.json"]
