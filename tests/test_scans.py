"""Tests for ptychobench.physics.scans: margins, spacing, jitter, determinism and errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptychobench.physics.scans import (
    fermat,
    make_scan,
    random,
    raster,
    step_from_overlap,
)

SHAPE = (200, 260)  # (H, W)
N = 64


def _assert_in_margin(coords: np.ndarray, shape: tuple[int, int], n: int) -> None:
    H, W = shape
    assert coords.ndim == 2 and coords.shape[1] == 2
    assert coords.dtype == np.float64
    assert len(coords) > 0
    x, y = coords[:, 0], coords[:, 1]
    assert np.all(x >= n / 2) and np.all(x <= W - n / 2)
    assert np.all(y >= n / 2) and np.all(y <= H - n / 2)


def _mean_nn(coords: np.ndarray) -> float:
    d, _ = cKDTree(coords).query(coords, k=2)
    return float(d[:, 1].mean())


@pytest.mark.parametrize("kind", ["random", "raster", "fermat"])
@pytest.mark.parametrize("shape", [SHAPE, (65, 65), (65, 300), (513, 97)])
def test_margins(kind: str, shape: tuple[int, int]) -> None:
    # random with step 5 on a 1 px² usable area would round to zero positions: give a count.
    density = {"n_positions": 50} if kind == "random" else {"step_px": 5.0}
    coords = make_scan(kind, shape, N, **density)
    _assert_in_margin(coords, shape, N)


@pytest.mark.parametrize("step", [4.0, 7.5, 12.3, 40.0])
def test_raster_step_is_exact_and_centred(step: float) -> None:
    coords = raster(SHAPE, N, step)
    _assert_in_margin(coords, SHAPE, N)
    H, W = SHAPE
    for axis, length in ((0, W), (1, H)):
        values = np.unique(coords[:, axis])
        np.testing.assert_allclose(np.diff(values), step, rtol=0, atol=1e-9)
        # Grid fills the usable range as far as the step allows, centred in it.
        assert values.size == int(np.floor((length - N) / step)) + 1
        assert (values[0] - N / 2) == pytest.approx((length - N / 2) - values[-1], abs=1e-9)
    assert len(coords) == np.unique(coords[:, 0]).size * np.unique(coords[:, 1]).size


def test_raster_exactly_divisible_range_reaches_both_edges() -> None:
    coords = raster((164, 164), N, 10.0)  # usable length 100 = 10 steps
    xs = np.unique(coords[:, 0])
    assert xs.size == 11
    assert xs[0] == N / 2 and xs[-1] == 164 - N / 2


def test_raster_row_major_order() -> None:
    coords = raster(SHAPE, N, 20.0)
    # x varies fastest: within the first row y is constant and x increases.
    n_x = np.unique(coords[:, 0]).size
    assert np.all(coords[:n_x, 1] == coords[0, 1])
    assert np.all(np.diff(coords[:n_x, 0]) > 0)


def test_raster_jitter_bounded_seeded_and_clipped() -> None:
    base = raster(SHAPE, N, 8.0)
    a = raster(SHAPE, N, 8.0, jitter_px=2.0, rng=1)
    b = raster(SHAPE, N, 8.0, jitter_px=2.0, rng=np.random.default_rng(1))
    c = raster(SHAPE, N, 8.0, jitter_px=2.0, rng=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(np.abs(a - base) <= 2.0)
    assert np.abs(a - base).max() > 1.0  # jitter actually moves points
    _assert_in_margin(a, SHAPE, N)
    # Large jitter near the edges is clipped into the margin, never outside.
    big = raster(SHAPE, N, 8.0, jitter_px=30.0, rng=3)
    _assert_in_margin(big, SHAPE, N)
    assert np.any(big[:, 0] == N / 2) and np.any(big[:, 0] == SHAPE[1] - N / 2)


def test_raster_jitter_needs_rng() -> None:
    with pytest.raises(ValueError, match="seed"):
        raster(SHAPE, N, 8.0, jitter_px=1.0)


@pytest.mark.parametrize("step", [3.0, 6.0, 10.0])
@pytest.mark.parametrize("shape", [SHAPE, (400, 400)])
def test_fermat_mean_nearest_neighbour_spacing(step: float, shape: tuple[int, int]) -> None:
    coords = fermat(shape, N, step)
    _assert_in_margin(coords, shape, N)
    assert len(coords) > 20
    assert _mean_nn(coords) == pytest.approx(step, rel=0.15)
    # No duplicate positions.
    assert np.unique(coords, axis=0).shape[0] == len(coords)


def test_fermat_is_centred_and_fills_the_area() -> None:
    H, W = SHAPE
    coords = fermat(SHAPE, N, 5.0)
    np.testing.assert_allclose(coords[0], (W / 2, H / 2))
    assert coords.mean(axis=0) == pytest.approx((W / 2, H / 2), abs=3.0)
    # Density: points per usable area ≈ 1 / (area per point of the spiral) within 25 %.
    expected = (W - N) * (H - N) / (np.pi * (5.0 / 1.70) ** 2)
    assert len(coords) == pytest.approx(expected, rel=0.25)


def test_random_uniform_and_seeded() -> None:
    a = random(SHAPE, N, 5000, np.random.default_rng(0))
    b = random(SHAPE, N, 5000, 0)
    c = random(SHAPE, N, 5000, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    _assert_in_margin(a, SHAPE, N)
    H, W = SHAPE
    # Uniform: mean at the centre of the usable range, std = range / sqrt(12).
    assert a[:, 0].mean() == pytest.approx(W / 2, abs=2.0)
    assert a[:, 1].std() == pytest.approx((H - N) / np.sqrt(12), rel=0.05)


def test_step_from_overlap() -> None:
    assert step_from_overlap(0.0, 20.0) == 20.0
    assert step_from_overlap(0.75, 20.0) == pytest.approx(5.0)
    for bad in (1.0, -0.1, np.nan):
        with pytest.raises(ValueError, match="overlap"):
            step_from_overlap(bad, 20.0)
    with pytest.raises(ValueError, match="diameter"):
        step_from_overlap(0.5, 0.0)


def test_make_scan_overlap_equals_step() -> None:
    by_overlap = make_scan("raster", SHAPE, N, overlap=0.6, probe_diameter_px=20.0)
    by_step = make_scan("raster", SHAPE, N, step_px=8.0)
    np.testing.assert_allclose(by_overlap, by_step)
    fermat_overlap = make_scan("fermat", SHAPE, N, overlap=0.6, probe_diameter_px=20.0)
    np.testing.assert_allclose(fermat_overlap, fermat(SHAPE, N, 8.0))


def test_make_scan_n_positions_sets_step() -> None:
    H, W = SHAPE
    area = (W - N) * (H - N)
    coords = make_scan("raster", SHAPE, N, n_positions=400)
    step = np.sqrt(area / 400)
    np.testing.assert_allclose(np.diff(np.unique(coords[:, 0])), step, atol=1e-9)
    spiral = make_scan("fermat", SHAPE, N, n_positions=400)
    assert len(spiral) == pytest.approx(400, rel=0.35)
    rnd = make_scan("random", SHAPE, N, n_positions=123, seed=4)
    assert rnd.shape == (123, 2)


def test_make_scan_random_step_sets_count() -> None:
    H, W = SHAPE
    coords = make_scan("random", SHAPE, N, step_px=6.0)
    assert len(coords) == round((W - N) * (H - N) / 36.0)


@pytest.mark.parametrize("kind", ["random", "raster", "fermat"])
def test_make_scan_determinism(kind: str) -> None:
    kwargs = {"jitter_px": 1.5} if kind == "raster" else {}
    a = make_scan(kind, SHAPE, N, step_px=7.0, seed=11, **kwargs)
    b = make_scan(kind, SHAPE, N, step_px=7.0, seed=11, **kwargs)
    np.testing.assert_array_equal(a, b)
    if kind != "fermat":  # fermat has no randomness
        c = make_scan(kind, SHAPE, N, step_px=7.0, seed=12, **kwargs)
        assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"step_px": 5.0, "overlap": 0.5, "probe_diameter_px": 20.0},
        {"step_px": 5.0, "n_positions": 10},
        {"overlap": 0.5, "n_positions": 10, "probe_diameter_px": 20.0},
    ],
)
def test_make_scan_exactly_one_density(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="exactly one of step_px, overlap, n_positions"):
        make_scan("raster", SHAPE, N, **kwargs)


def test_make_scan_overlap_needs_diameter() -> None:
    with pytest.raises(ValueError, match="probe_diameter_px"):
        make_scan("fermat", SHAPE, N, overlap=0.5)


def test_make_scan_unknown_kind() -> None:
    with pytest.raises(ValueError) as err:
        make_scan("spiral", SHAPE, N, step_px=5.0)
    message = str(err.value)
    assert "unknown scan kind 'spiral'" in message
    for kind in ("random", "raster", "fermat"):
        assert kind in message


def test_object_too_small() -> None:
    with pytest.raises(ValueError) as err:
        make_scan("raster", (64, 200), N, step_px=5.0)
    message = str(err.value)
    assert "(64, 200)" in message and "N = 64" in message and "65" in message


@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("random", {"n_positions": 0}),
        ("raster", {"n_positions": 0}),
        ("random", {"step_px": 1000.0}),  # usable area / step² rounds to 0
    ],
)
def test_zero_positions(kind: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="zero positions"):
        make_scan(kind, SHAPE, N, **kwargs)


def test_jitter_only_for_raster() -> None:
    with pytest.raises(ValueError, match="raster"):
        make_scan("fermat", SHAPE, N, step_px=5.0, jitter_px=1.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.inf])
def test_bad_step(bad: float) -> None:
    with pytest.raises(ValueError, match="step_px"):
        raster(SHAPE, N, bad)
