"""Tests of subsampling, grouping and views (SPEC §4)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from ptychobench.data.dataset import DatasetError, PtychoDataset
from ptychobench.data.grouping import (
    group_centres,
    group_offsets,
    make_groups,
    make_view,
    subsample,
)


def make_ds(n: int = 60, N: int = 8, seed: int = 0) -> PtychoDataset:
    rng = np.random.default_rng(seed)
    return PtychoDataset(
        diffraction=rng.random((n, N, N), dtype=np.float32),
        probeGuess=np.ones((N, N), np.complex64),
        xcoords=rng.uniform(4, 95, n),
        ycoords=rng.uniform(4, 95, n),
        objectGuess=np.ones((100, 100), np.complex64),
        metadata={"schema_version": 1},
    )


# ------------------------------------------------------------------------------ subsample


@pytest.mark.parametrize("s_img, expected", [(1.0, 60), (0.5, 30), (0.25, 15), (0.01, 1)])
def test_subsample_count(s_img: float, expected: int) -> None:
    sub = subsample(make_ds(), s_img, seed=3)
    assert sub.n == expected
    rec = sub.metadata["transformations"][-1]
    assert rec == {
        "op": "subsample",
        "s_img": s_img,
        "seed": 3,
        "n_before": 60,
        "n_after": expected,
    }


def test_subsample_rounding_half_up() -> None:
    assert subsample(make_ds(n=3), 0.5, seed=0).n == 2


def test_subsample_deterministic_sorted_subset() -> None:
    ds = make_ds()
    a, b = subsample(ds, 0.4, seed=7), subsample(ds, 0.4, seed=7)
    c = subsample(ds, 0.4, seed=8)
    assert np.array_equal(a.xcoords, b.xcoords) and np.array_equal(a.diffraction, b.diffraction)
    assert not np.array_equal(a.xcoords, c.xcoords)
    idx = np.array([int(np.flatnonzero(ds.xcoords == x)[0]) for x in a.xcoords])
    assert (np.diff(idx) > 0).all()
    assert np.array_equal(a.diffraction, ds.diffraction[idx])


@pytest.mark.parametrize("s_img", [0.0, -0.5, 1.5, float("nan")])
def test_subsample_bad_fraction(s_img: float) -> None:
    with pytest.raises(ValueError, match="s_img"):
        subsample(make_ds(), s_img, seed=0)


# ------------------------------------------------------------------------------ groups


def test_gs1_groups() -> None:
    coords = make_ds().coords
    g = make_groups(coords, 1)
    assert g.shape == (60, 1) and g.dtype == np.int64
    assert np.array_equal(g[:, 0], np.arange(60))
    s = make_groups(coords, 1, n_groups=10, seed=4)
    assert s.shape == (10, 1) and len(set(s[:, 0])) == 10 and (np.diff(s[:, 0]) > 0).all()
    assert np.array_equal(s, make_groups(coords, 1, n_groups=10, seed=4))
    with pytest.raises(ValueError, match="n_groups"):
        make_groups(coords, 1, n_groups=61)
    assert not group_offsets(coords, g).any()
    assert np.array_equal(group_centres(coords, g), coords)


@pytest.mark.parametrize("K", [4, 7])
def test_gs2_members_among_K_nearest(K: int) -> None:
    coords = make_ds().coords
    seeds_groups = make_groups(coords, 2, neighbor_count=K, seed=1)
    assert seeds_groups.shape == (60, 4) and seeds_groups.dtype == np.int64
    dist = cdist(coords, coords)
    for seed_idx, members in enumerate(seeds_groups):
        assert len(set(members.tolist())) == 4
        assert seed_idx not in members
        d_seed = dist[seed_idx].copy()
        d_seed[seed_idx] = np.inf
        kth = np.sort(d_seed)[K - 1]
        assert (d_seed[members] <= kth + 1e-12).all()


def test_gs2_K_equals_C_gives_exact_nearest() -> None:
    coords = make_ds().coords
    g = make_groups(coords, 2, neighbor_count=4, seed=0)
    dist = cdist(coords, coords)
    np.fill_diagonal(dist, np.inf)
    for s, members in enumerate(g):
        assert set(members.tolist()) == set(np.argsort(dist[s])[:4].tolist())


def test_gs2_offsets_zero_mean_and_sign() -> None:
    coords = make_ds().coords
    g = make_groups(coords, 2, n_groups=20, neighbor_count=6, seed=2)
    off = group_offsets(coords, g)
    cen = group_centres(coords, g)
    assert off.shape == (20, 4, 2) and cen.shape == (20, 2)
    np.testing.assert_allclose(off.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(cen[:, None, :] + off, coords[g])  # offset = member - centre


def test_gs2_seeded_determinism() -> None:
    coords = make_ds().coords
    a = make_groups(coords, 2, n_groups=25, neighbor_count=7, seed=11)
    b = make_groups(coords, 2, n_groups=25, neighbor_count=7, seed=11)
    c = make_groups(coords, 2, n_groups=25, neighbor_count=7, seed=12)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_gs2_errors() -> None:
    coords = make_ds().coords
    with pytest.raises(ValueError, match="neighbor_count K=3 < C=4 patterns per group"):
        make_groups(coords, 2, neighbor_count=3)
    with pytest.raises(ValueError, match="at least C \\+ 1 = 5"):
        make_groups(coords[:4], 2)
    with pytest.raises(ValueError, match="gridsize"):
        make_groups(coords, 3)
    with pytest.raises(ValueError, match="n_groups"):
        make_groups(coords, 2, n_groups=0)


def test_gs2_small_n_caps_K() -> None:
    coords = make_ds().coords[:5]
    g = make_groups(coords, 2, neighbor_count=7)
    assert g.shape == (5, 4)
    for s, members in enumerate(g):
        assert set(members.tolist()) == set(range(5)) - {s}


def test_gs2_duplicate_positions() -> None:
    coords = np.array([[0.0, 0.0]] * 3 + [[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    g = make_groups(coords, 2, neighbor_count=4, seed=0)
    for s, members in enumerate(g):
        assert s not in members and len(set(members.tolist())) == 4


# ------------------------------------------------------------------------------ views


def test_make_view_gs2() -> None:
    ds = make_ds()
    v = make_view(ds, 2, s_img=0.5, n_groups=10, neighbor_count=5, seed=3)
    assert v.n == 30 and v.groups.shape == (10, 4)
    assert v.metadata["view"]["gridsize"] == 2 and v.metadata["view"]["n_groups"] == 10
    assert [t["op"] for t in v.metadata["transformations"]] == ["subsample", "view"]
    w = make_view(ds, 2, s_img=0.5, n_groups=10, neighbor_count=5, seed=3)
    assert np.array_equal(v.groups, w.groups) and np.array_equal(v.xcoords, w.xcoords)
    assert ds.groups is None and "view" not in ds.metadata


def test_make_view_gs1_default() -> None:
    v = make_view(make_ds(), 1)
    assert v.n == 60 and np.array_equal(v.groups[:, 0], np.arange(60))


def test_make_view_too_few_for_gs2() -> None:
    with pytest.raises(DatasetError, match="fewer patterns than a grouping needs"):
        make_view(make_ds(n=8), 2, s_img=0.5)
