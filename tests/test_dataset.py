"""Tests of the dataset contract: validate() and metadata helpers (SPEC §3)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from conftest import make_dataset

from ptychobench.data.dataset import (
    SCHEMA_VERSION,
    DatasetError,
    PtychoDataset,
    metadata_json,
    parse_metadata,
    validate,
)


def make_ds(n: int = 12, N: int = 8, H: int = 40, W: int = 48, seed: int = 0) -> PtychoDataset:
    """Small valid dataset with every optional key."""
    return make_dataset(n, N, H, W, seed)


def test_valid_dataset_passes() -> None:
    validate(make_ds())
    ds = make_ds()
    ds.objectGuess = None
    ds.Y = None
    ds.groups = None
    validate(ds)


def _set(key: str, value_fn: Callable[[PtychoDataset], object]) -> Callable[[PtychoDataset], None]:
    def mutate(ds: PtychoDataset) -> None:
        setattr(ds, key, value_fn(ds))

    return mutate


def _poke(key: str, index: tuple, value: complex | float) -> Callable[[PtychoDataset], None]:
    def mutate(ds: PtychoDataset) -> None:
        a = getattr(ds, key).copy()
        a[index] = value
        setattr(ds, key, a)

    return mutate


# (id, mutation, key expected in message, found-value fragment expected in message)
BAD_CASES = [
    ("diffraction-missing", _set("diffraction", lambda d: None), "diffraction", "missing"),
    (
        "diffraction-complex",
        _set("diffraction", lambda d: d.diffraction.astype(np.complex64)),
        "diffraction",
        "complex64",
    ),
    (
        "diffraction-int-counts",
        _set("diffraction", lambda d: (d.diffraction * 100).astype(np.uint16)),
        "diffraction",
        "uint16",
    ),
    ("diffraction-negative", _poke("diffraction", (3, 1, 2), -0.5), "diffraction", "-0.5"),
    ("diffraction-nan", _poke("diffraction", (0, 0, 0), np.nan), "diffraction", "NaN"),
    ("diffraction-inf", _poke("diffraction", (1, 2, 3), np.inf), "diffraction", "inf"),
    (
        "diffraction-rank2",
        _set("diffraction", lambda d: d.diffraction[0]),
        "diffraction",
        "(8, 8)",
    ),
    (
        "diffraction-not-square",
        _set("diffraction", lambda d: d.diffraction[:, :, :6]),
        "diffraction",
        "(12, 8, 6)",
    ),
    (
        "diffraction-list",
        _set("diffraction", lambda d: d.diffraction.tolist()),
        "diffraction",
        "list",
    ),
    (
        "probe-real",
        _set("probeGuess", lambda d: np.abs(d.probeGuess)),
        "probeGuess",
        "float32",
    ),
    (
        "probe-N-mismatch",
        _set("probeGuess", lambda d: np.ones((16, 16), np.complex64)),
        "probeGuess",
        "(16, 16)",
    ),
    ("probe-nan", _poke("probeGuess", (0, 0), np.nan), "probeGuess", "NaN"),
    (
        "xcoords-int",
        _set("xcoords", lambda d: d.xcoords.astype(np.int64)),
        "xcoords",
        "int64",
    ),
    ("ycoords-short", _set("ycoords", lambda d: d.ycoords[:-1]), "ycoords", "(11,)"),
    ("xcoords-nan", _poke("xcoords", (4,), np.nan), "xcoords", "nan"),
    (
        "ycoords-2d",
        _set("ycoords", lambda d: np.stack([d.ycoords, d.ycoords])),
        "ycoords",
        "(2, 12)",
    ),
    (
        "object-real",
        _set("objectGuess", lambda d: np.abs(d.objectGuess)),
        "objectGuess",
        "float32",
    ),
    (
        "object-3d",
        _set("objectGuess", lambda d: d.objectGuess[None]),
        "objectGuess",
        "(1, 40, 48)",
    ),
    ("x-outside-object", _poke("xcoords", (5,), 47.5), "xcoords", "index 5: 47.5"),
    ("y-negative-outside-object", _poke("ycoords", (2,), -0.25), "ycoords", "index 2: -0.25"),
    ("Y-real", _set("Y", lambda d: np.abs(d.Y)), "Y", "float32"),
    ("Y-wrong-shape", _set("Y", lambda d: d.Y[:-2]), "Y", "(10, 8, 8)"),
    (
        "groups-float",
        _set("groups", lambda d: d.groups.astype(np.float64)),
        "groups",
        "float64",
    ),
    ("groups-out-of-range", _poke("groups", (3, 0), 12), "groups", "12"),
    (
        "groups-not-square",
        _set("groups", lambda d: np.zeros((4, 3), np.int64)),
        "groups",
        "C=3",
    ),
    ("metadata-not-dict", _set("metadata", lambda d: "{}"), "metadata", "str"),
    (
        "metadata-not-json",
        _set("metadata", lambda d: {"x": object()}),
        "metadata",
        "object",
    ),
    (
        "metadata-future-schema",
        _set("metadata", lambda d: {"schema_version": SCHEMA_VERSION + 1}),
        "metadata.schema_version",
        str(SCHEMA_VERSION + 1),
    ),
]


@pytest.mark.parametrize(
    "mutate, key, found", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_validate_rejects(mutate: Callable, key: str, found: str) -> None:
    ds = make_ds()
    mutate(ds)
    with pytest.raises(DatasetError) as info:
        validate(ds, source="d.npz")
    msg = str(info.value)
    assert msg.startswith("d.npz: ")
    assert f"key '{key}'" in msg
    assert "expected" in msg
    assert found in msg, msg


def test_bad_case_count() -> None:
    assert len({c[0] for c in BAD_CASES}) >= 15


def test_integer_diffraction_message_offers_counts() -> None:
    ds = make_ds()
    ds.diffraction = (ds.diffraction * 100).astype(np.int32)
    with pytest.raises(DatasetError, match="photon counts/intensity.*--counts"):
        validate(ds)


def test_complex_diffraction_message_exact() -> None:
    ds = make_ds()
    ds.diffraction = ds.diffraction.astype(np.complex64)
    with pytest.raises(DatasetError) as info:
        validate(ds, source="d.npz")
    assert str(info.value).startswith("d.npz: key 'diffraction': expected real float amplitude")
    assert str(info.value).endswith("found complex64")


def test_min_patterns() -> None:
    ds = make_ds(n=4)
    validate(ds, min_patterns=4)
    with pytest.raises(DatasetError, match="fewer patterns than a grouping needs.*n=4"):
        validate(ds, min_patterns=5)


def test_empty_dataset_rejected() -> None:
    ds = make_ds().select(np.zeros(12, bool))
    with pytest.raises(DatasetError, match="n=0"):
        validate(ds)


def test_positions_on_object_edges_are_inside() -> None:
    ds = make_ds()
    ds.xcoords[0], ds.ycoords[0] = 0.0, 0.0
    ds.xcoords[1], ds.ycoords[1] = 47.0, 39.0  # W - 1, H - 1
    validate(ds)


def test_dataset_error_is_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


def test_metadata_json_roundtrip_and_canonical() -> None:
    meta = {"b": np.float32(1.5), "a": [np.int64(3), np.arange(2)], "c": {"z": True}}
    text = metadata_json(meta)
    assert text == '{"a": [3, [0, 1]], "b": 1.5, "c": {"z": true}}'
    assert parse_metadata(text) == {"a": [3, [0, 1]], "b": 1.5, "c": {"z": True}}
    assert parse_metadata(text.encode()) == parse_metadata(text)


def test_metadata_json_rejects_nan() -> None:
    with pytest.raises(DatasetError, match="metadata"):
        metadata_json({"dose": float("nan")})


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '"str"'])
def test_parse_metadata_rejects(text: str) -> None:
    with pytest.raises(DatasetError, match="key 'metadata'"):
        parse_metadata(text, source="f.npz")


def test_validate_does_not_modify() -> None:
    ds = make_ds()
    before = ds.copy()
    validate(ds)
    assert np.array_equal(ds.diffraction, before.diffraction)
    assert ds.metadata == before.metadata


def test_photons_per_pattern_chunked_equals_direct():
    from ptychobench.data.dataset import photons_per_pattern

    d = np.random.default_rng(0).random((37, 8, 8)).astype(np.float32)
    direct = np.square(d, dtype=np.float64).sum(axis=(-2, -1))
    assert np.allclose(photons_per_pattern(d, chunk=5), direct, rtol=1e-12)
