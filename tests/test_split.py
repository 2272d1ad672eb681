"""Tests of the spatial train/test split (SPEC §4)."""

from __future__ import annotations

import numpy as np
import pytest

from ptychobench.data.dataset import DatasetError, PtychoDataset, validate
from ptychobench.data.split import split, split_value


def make_ds(n: int = 50, N: int = 8, H: int = 64, W: int = 80, seed: int = 0) -> PtychoDataset:
    rng = np.random.default_rng(seed)
    return PtychoDataset(
        diffraction=rng.random((n, N, N), dtype=np.float32),
        probeGuess=np.ones((N, N), np.complex64),
        xcoords=rng.uniform(4, W - 5, n),
        ycoords=rng.uniform(4, H - 5, n),
        objectGuess=np.ones((H, W), np.complex64),
        Y=(rng.random((n, N, N)) + 1j).astype(np.complex64),
        metadata={"schema_version": 1, "transformations": [{"op": "simulate"}]},
        groups=np.arange(n, dtype=np.int64)[:, None],
    )


def keyset(ds: PtychoDataset) -> set[tuple[float, float]]:
    return set(zip(ds.xcoords.tolist(), ds.ycoords.tolist(), strict=True))


@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("fraction", [0.5, 0.3, 0.8])
def test_split_partitions(axis: str, fraction: float) -> None:
    ds = make_ds()
    train, test = split(ds, axis=axis, fraction=fraction)
    c = ds.xcoords if axis == "x" else ds.ycoords
    value = c.min() + fraction * (c.max() - c.min())
    ct = train.xcoords if axis == "x" else train.ycoords
    cs = test.xcoords if axis == "x" else test.ycoords
    assert (ct < value).all() and (cs >= value).all()
    assert train.n + test.n == ds.n
    assert train.n == int((c < value).sum())
    assert keyset(train).isdisjoint(keyset(test))
    assert keyset(train) | keyset(test) == keyset(ds)
    for half in (train, test):
        validate(half)
        assert np.array_equal(half.objectGuess, ds.objectGuess)
        assert np.array_equal(half.probeGuess, ds.probeGuess)
        assert half.groups is None
    # per-scan arrays stay aligned with coordinates
    idx = np.flatnonzero(c < value)
    assert np.array_equal(train.diffraction, ds.diffraction[idx])
    assert np.array_equal(train.Y, ds.Y[idx])
    assert np.array_equal(train.xcoords, ds.xcoords[idx])


def test_split_metadata_recorded() -> None:
    ds = make_ds()
    train, test = split(ds, "y", 0.5)
    value = split_value(ds.ycoords, 0.5)
    for half, name in ((train, "train"), (test, "test")):
        rec = half.metadata["transformations"][-1]
        assert half.metadata["transformations"][0] == {"op": "simulate"}
        assert rec["op"] == "split" and rec["half"] == name
        assert rec["axis"] == "y" and rec["fraction"] == 0.5
        assert rec["split_value"] == pytest.approx(value)
        assert rec["n_train"] == train.n and rec["n_test"] == test.n and rec["n_parent"] == ds.n
        assert half.metadata["split"] == rec
    assert len(ds.metadata["transformations"]) == 1  # parent untouched


def test_split_value_exact_and_boundary_goes_to_test() -> None:
    ds = make_ds(n=5)
    ds.ycoords = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    assert split_value(ds.ycoords, 0.5) == 30.0
    train, test = split(ds, "y", 0.5)
    assert train.ycoords.tolist() == [10.0, 20.0]
    assert test.ycoords.tolist() == [30.0, 40.0, 50.0]


@pytest.mark.parametrize("axis, fraction", [("z", 0.5), ("y", 0.0), ("y", 1.0), ("x", -0.1)])
def test_split_bad_args(axis: str, fraction: float) -> None:
    with pytest.raises(ValueError, match="axis|fraction"):
        split(make_ds(), axis, fraction)


def test_split_empty_half() -> None:
    ds = make_ds(n=6)
    ds.ycoords[:] = 20.0
    with pytest.raises(DatasetError, match="empty train half"):
        split(ds, "y", 0.5)
