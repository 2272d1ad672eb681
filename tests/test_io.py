"""Tests of NPZ/CXI reading and writing (SPEC §3)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_same, make_dataset

from ptychobench.data import io as pio
from ptychobench.data.dataset import SCHEMA_VERSION, DatasetError, PtychoDataset


def make_ds(n: int = 10, N: int = 8, H: int = 32, W: int = 36, seed: int = 0) -> PtychoDataset:
    meta = {
        "schema_version": SCHEMA_VERSION,
        "creator": "test",
        "dose": 1000.0,
        "seeds": {"noise": 3},
        "transformations": [{"op": "simulate"}],
    }
    return make_dataset(n, N, H, W, seed, metadata=meta)


def listdir(path: Path) -> list[str]:
    return sorted(os.listdir(path))


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", [".npz", ".cxi"])
def test_roundtrip_full(tmp_path: Path, ext: str) -> None:
    ds = make_ds()
    path = tmp_path / f"d{ext}"
    pio.save(ds, path)
    back = pio.load(path)
    assert_same(ds, back)
    assert listdir(tmp_path) == [f"d{ext}"]  # no temp files left behind


@pytest.mark.parametrize("ext", [".npz", ".cxi"])
def test_roundtrip_minimal(tmp_path: Path, ext: str) -> None:
    ds = make_ds()
    ds.objectGuess = ds.Y = ds.groups = None
    ds.metadata = {}
    path = tmp_path / f"d{ext}"
    pio.save(ds, path)
    back = pio.load(path)
    assert_same(ds, back)
    assert back.objectGuess is None and back.Y is None and back.groups is None


@pytest.mark.parametrize("ext", [".npz", ".cxi"])
def test_roundtrip_gs2_groups(tmp_path: Path, ext: str) -> None:
    ds = make_ds()
    ds.groups = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=np.int64)
    pio.save(ds, tmp_path / f"d{ext}")
    assert_same(ds, pio.load(tmp_path / f"d{ext}"))


def test_write_casts_to_canonical_dtypes(tmp_path: Path) -> None:
    ds = make_ds()
    ds.diffraction = ds.diffraction.astype(np.float64)
    ds.probeGuess = ds.probeGuess.astype(np.complex128)
    ds.groups = ds.groups.astype(np.int32)
    pio.write_npz(ds, tmp_path / "d.npz")
    back = pio.read_npz(tmp_path / "d.npz")
    assert back.diffraction.dtype == np.float32
    assert back.probeGuess.dtype == np.complex64
    assert back.groups.dtype == np.int64


def test_npz_keys_and_metadata_format(tmp_path: Path) -> None:
    ds = make_ds()
    pio.write_npz(ds, tmp_path / "d.npz")
    with np.load(tmp_path / "d.npz", allow_pickle=False) as z:
        assert z.files == [
            "diffraction",
            "probeGuess",
            "xcoords",
            "ycoords",
            "objectGuess",
            "Y",
            "groups",
            "metadata",
        ]
        meta = z["metadata"]
        assert meta.shape == () and meta.dtype.kind == "U"
        assert json.loads(meta.item()) == ds.metadata
        assert meta.item() == json.dumps(ds.metadata, sort_keys=True)


def test_same_dataset_same_bytes(tmp_path: Path) -> None:
    ds = make_ds()
    pio.write_npz(ds, tmp_path / "a.npz")
    time.sleep(2.1)  # zip timestamps have 2 s resolution
    pio.write_npz(ds.copy(), tmp_path / "b.npz")
    a = (tmp_path / "a.npz").read_bytes()
    assert a == (tmp_path / "b.npz").read_bytes()
    assert pio.dataset_bytes_npz(ds) == a
    assert pio.sha256_file(tmp_path / "a.npz") == hashlib.sha256(a).hexdigest()


def test_cxi_layout(tmp_path: Path) -> None:
    """A dataset without geometry and with non-integer amplitudes (the full layout with metres
    and counts is checked in test_cxi.py)."""
    ds = make_ds()
    pio.write_cxi(ds, tmp_path / "d.cxi")
    with h5py.File(tmp_path / "d.cxi", "r") as f:
        assert f["cxi_version"][()] == 160 and f["number_of_entries"][()] == 1
        inten = f["/entry_1/instrument_1/detector_1/data"]
        assert inten.attrs["quantity"] == "intensity" and inten.dtype == np.float64
        assert np.array_equal(inten[()], ds.diffraction.astype(np.float64) ** 2)
        link = f.get("/entry_1/data_1/data", getlink=True)
        assert link.path == "/entry_1/instrument_1/detector_1/data"
        # the exact probe in our extras; the photon-scaled one where Ptychodus reads a probe
        assert np.array_equal(f["/entry_1/ptychobench/probeGuess"][()], ds.probeGuess)
        ill = f["/entry_1/instrument_1/source_1/illumination"][()]
        photons = float(np.mean(np.sum(ds.diffraction.astype(np.float64) ** 2, axis=(1, 2))))
        assert np.sum(np.abs(ill.astype(np.complex128)) ** 2) == pytest.approx(photons, rel=1e-6)
        assert "/entry_1/instrument_1/source_1/probe" not in f  # NeXus: the radiation type
        # no geometry: no metres made up, no pixel-unit translation; exact pixels in extras
        assert "/entry_1/sample_1/geometry_1/translation" not in f
        assert np.array_equal(f["/entry_1/ptychobench/xcoords"][()], ds.xcoords)
        assert np.array_equal(f["/entry_1/ptychobench/ycoords"][()], ds.ycoords)
        assert json.loads(f["/entry_1/ptychobench/metadata"].asstr()[()]) == ds.metadata


def _foreign_cxi(
    path: Path,
    counts: np.ndarray,
    ds: PtychoDataset,
    *,
    geometry: bool,
    translation: np.ndarray,
    units: str | None,
) -> None:
    with h5py.File(path, "w") as f:
        f["/entry_1/instrument_1/detector_1/data"] = counts
        f["/entry_1/instrument_1/source_1/probe"] = ds.probeGuess
        if geometry:
            f["/entry_1/instrument_1/source_1/wavelength"] = 1e-10
            f["/entry_1/instrument_1/detector_1/distance"] = 1.0
            f["/entry_1/instrument_1/detector_1/x_pixel_size"] = 1e-4
            f["/entry_1/instrument_1/detector_1/y_pixel_size"] = 1e-4
        t = f.create_dataset("/entry_1/sample_1/geometry_1/translation", data=translation)
        if units is not None:
            t.attrs["units"] = units


def test_foreign_cxi_counts_in_metres(tmp_path: Path) -> None:
    ds = make_ds()
    counts = np.random.default_rng(1).poisson(20.0, ds.diffraction.shape).astype(np.float32)
    dx = 1e-10 * 1.0 / (ds.N * 1e-4)  # object pixel λz/(Np)
    t = np.stack([ds.xcoords, ds.ycoords, 0 * ds.xcoords], -1) * dx
    path = tmp_path / "foreign.cxi"
    _foreign_cxi(path, counts, ds, geometry=True, translation=t, units=None)  # CXI: metres
    back = pio.read_cxi(path)
    assert back.diffraction.dtype == np.float32
    np.testing.assert_allclose(back.diffraction, np.sqrt(counts), rtol=1e-7)
    # positions: t/dx + δ (δ = 0.5 for even N), moved by whole pixels to min = N//2 + frac
    shift = back.xcoords - ds.xcoords
    assert np.ptp(shift) < 1e-9
    assert abs((shift[0] - 0.5) - round(shift[0] - 0.5)) < 1e-9
    assert back.metadata["transformations"][0]["op"] == "cxi_data_to_amplitude"
    assert np.array_equal(back.probeGuess, ds.probeGuess)
    assert back.metadata["scale"] == 1.0


def test_foreign_cxi_in_pixels_rejected(tmp_path: Path) -> None:
    """CXI translations are metres (SI); pixel units without a geometry cannot be placed."""
    ds = make_ds()
    counts = np.random.default_rng(1).poisson(20.0, ds.diffraction.shape).astype(np.float32)
    path = tmp_path / "foreign.cxi"
    t = np.stack([ds.xcoords, ds.ycoords, 0 * ds.xcoords], -1)
    _foreign_cxi(path, counts, ds, geometry=False, translation=t, units="pixel")
    with pytest.raises(DatasetError, match="translation.*metres.*units 'pixel'"):
        pio.read_cxi(path)


def test_foreign_cxi_metres_rejected(tmp_path: Path) -> None:
    """Metres (no units attribute) but no geometry to convert them to pixels."""
    ds = make_ds()
    path = tmp_path / "foreign.cxi"
    _foreign_cxi(
        path, ds.diffraction**2, ds, geometry=False, translation=np.zeros((ds.n, 3)), units=None
    )
    with h5py.File(path, "a") as f:
        f["/entry_1/instrument_1/detector_1/data"].attrs["quantity"] = "intensity"
    with pytest.raises(DatasetError, match="translation.*no geometry.*wavelength") as err:
        pio.read_cxi(path)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- legacy layouts


def _raw(ds: PtychoDataset) -> dict[str, np.ndarray]:
    return {
        "probeGuess": ds.probeGuess,
        "xcoords": ds.xcoords,
        "ycoords": ds.ycoords,
        "objectGuess": ds.objectGuess,
        "metadata": np.array(json.dumps(ds.metadata)),
    }


def test_legacy_diff3d_alias(tmp_path: Path) -> None:
    ds = make_ds()
    np.savez(tmp_path / "l.npz", diff3d=ds.diffraction, **_raw(ds))
    back = pio.load(tmp_path / "l.npz")
    assert np.array_equal(back.diffraction, ds.diffraction)


def test_legacy_NNn_layout(tmp_path: Path) -> None:
    ds = make_ds()
    stack = np.transpose(ds.diffraction, (1, 2, 0)).astype(np.float64)  # (N, N, n)
    np.savez(tmp_path / "l.npz", diffraction=stack, **_raw(ds))
    back = pio.load(tmp_path / "l.npz")
    assert back.diffraction.shape == (ds.n, ds.N, ds.N)
    assert back.diffraction.dtype == np.float32
    assert np.array_equal(back.diffraction, ds.diffraction)
    assert back.diffraction.flags.c_contiguous


def test_legacy_channel_layout_and_Y(tmp_path: Path) -> None:
    ds = make_ds()
    np.savez(
        tmp_path / "l.npz",
        diffraction=ds.diffraction[..., None],
        Y=ds.Y[..., None].astype(np.complex128),
        xcoords_start=ds.xcoords,
        scan_index=np.zeros(ds.n, np.int64),
        **_raw(ds),
    )
    back = pio.load(tmp_path / "l.npz")
    assert np.array_equal(back.diffraction, ds.diffraction)
    assert back.Y.dtype == np.complex64 and np.array_equal(back.Y, ds.Y)


def test_legacy_ground_truth_patches_alias(tmp_path: Path) -> None:
    ds = make_ds()
    np.savez(tmp_path / "l.npz", diff3d=ds.diffraction, ground_truth_patches=ds.Y, **_raw(ds))
    assert np.array_equal(pio.load(tmp_path / "l.npz").Y, ds.Y)


def test_missing_metadata_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = make_ds()
    raw = _raw(ds)
    del raw["metadata"]
    np.savez(tmp_path / "l.npz", diffraction=ds.diffraction, **raw)
    with caplog.at_level(logging.WARNING):
        back = pio.load(tmp_path / "l.npz")
    assert back.metadata == {}
    assert "metadata" in caplog.text


def test_counts_conversion(tmp_path: Path) -> None:
    ds = make_ds()
    counts = np.random.default_rng(2).poisson(9.0, ds.diffraction.shape).astype(np.uint16)
    np.savez(tmp_path / "c.npz", diffraction=counts, **_raw(ds))
    with pytest.raises(DatasetError, match="photon counts/intensity.*--counts"):
        pio.load(tmp_path / "c.npz")
    back = pio.load(tmp_path / "c.npz", counts=True)
    assert back.diffraction.dtype == np.float32
    assert np.array_equal(back.diffraction, np.sqrt(counts.astype(np.float64)).astype(np.float32))
    assert back.metadata["transformations"][-1] == {
        "op": "counts_to_amplitude",
        "source_dtype": "uint16",
        "formula": "sqrt",
    }


def test_counts_negative_rejected(tmp_path: Path) -> None:
    ds = make_ds()
    bad = ds.diffraction.copy()
    bad[0, 0, 0] = -1
    np.savez(tmp_path / "c.npz", diffraction=bad, **_raw(ds))
    with pytest.raises(DatasetError, match="counts >= 0"):
        pio.load(tmp_path / "c.npz", counts=True)


def test_wrong_kinds_not_silently_cast(tmp_path: Path) -> None:
    ds = make_ds()
    raw = _raw(ds)
    raw["probeGuess"] = np.abs(ds.probeGuess)
    np.savez(tmp_path / "r.npz", diffraction=ds.diffraction, **raw)
    with pytest.raises(DatasetError, match="r.npz: key 'probeGuess'.*found float32"):
        pio.load(tmp_path / "r.npz")
    np.savez(tmp_path / "c.npz", diffraction=ds.diffraction.astype(np.complex64), **_raw(ds))
    with pytest.raises(DatasetError, match="key 'diffraction'.*found complex64"):
        pio.load(tmp_path / "c.npz")


# ---------------------------------------------------------------------------- bad files


def test_pickled_metadata_rejected(tmp_path: Path) -> None:
    ds = make_ds()
    raw = _raw(ds)
    del raw["metadata"]
    meta = np.empty((), dtype=object)
    meta[()] = {"a": 1}
    np.savez(tmp_path / "p.npz", diffraction=ds.diffraction, _metadata=meta, **raw)
    with pytest.raises(DatasetError) as info:
        pio.load(tmp_path / "p.npz")
    msg = str(info.value)
    assert "key '_metadata' is a pickled object array" in msg
    assert "never unpickles" in msg and "JSON string" in msg


def test_pickled_data_array_rejected(tmp_path: Path) -> None:
    ds = make_ds()
    np.savez(
        tmp_path / "p.npz",
        diffraction=np.array([ds.diffraction[0], None], dtype=object),
        **_raw(ds),
    )
    with pytest.raises(DatasetError, match="key 'diffraction' is a pickled object array"):
        pio.load(tmp_path / "p.npz")


def test_truncated_file_rejected(tmp_path: Path) -> None:
    ds = make_ds()
    pio.save(ds, tmp_path / "d.npz")
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"t\.npz"):
        pio.load(tmp_path / "t.npz")


def test_corrupt_member_rejected(tmp_path: Path) -> None:
    ds = make_ds()
    pio.save(ds, tmp_path / "d.npz")
    data = bytearray((tmp_path / "d.npz").read_bytes())
    data[200:260] = b"\x00" * 60  # inside the first member: header/CRC mismatch
    (tmp_path / "x.npz").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"x\.npz"):
        pio.load(tmp_path / "x.npz")


def test_not_a_zip_rejected(tmp_path: Path) -> None:
    (tmp_path / "n.npz").write_text("hello")
    with pytest.raises(DatasetError, match=r"n\.npz.*not a zip"):
        pio.load(tmp_path / "n.npz")


def test_truncated_cxi_rejected(tmp_path: Path) -> None:
    pio.save(make_ds(), tmp_path / "d.cxi")
    data = (tmp_path / "d.cxi").read_bytes()
    (tmp_path / "t.cxi").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"t\.cxi"):
        pio.load(tmp_path / "t.cxi")


def test_missing_required_key_rejected(tmp_path: Path) -> None:
    ds = make_ds()
    raw = _raw(ds)
    del raw["xcoords"]
    np.savez(tmp_path / "m.npz", diffraction=ds.diffraction, **raw)
    with pytest.raises(DatasetError, match="key 'xcoords'.*missing"):
        pio.load(tmp_path / "m.npz")


def test_probe_less_file_loads_and_reconstructing_asks_for_probe(tmp_path: Path) -> None:
    from ptychobench.data.dataset import require_probe, with_probe

    ds = make_ds()
    raw = _raw(ds)
    del raw["probeGuess"]
    np.savez(tmp_path / "m.npz", diffraction=ds.diffraction, **raw)
    got = pio.load(tmp_path / "m.npz")
    assert got.probeGuess is None
    np.testing.assert_array_equal(got.diffraction, ds.diffraction)
    with pytest.raises(DatasetError, match=r"m\.npz: no probe .* --probe FILE") as err:
        require_probe(got, str(tmp_path / "m.npz"))
    assert "\n" not in str(err.value)
    before = list(got.metadata.get("transformations", []))
    fixed = with_probe(got, ds.probeGuess, "p.npz")
    np.testing.assert_array_equal(require_probe(fixed), ds.probeGuess)
    assert fixed.metadata["transformations"][-1] == {"op": "set_probe", "source": "p.npz"}
    assert got.metadata.get("transformations", []) == before  # the original is untouched
    with pytest.raises(DatasetError, match="probeGuess"):
        with_probe(got, np.ones((3, 3), np.complex64), "bad.npz")


def test_missing_file_and_bad_extension(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="file not found: "):
        pio.load(tmp_path / "nope.npz")
    with pytest.raises(DatasetError, match=r"\.npz, \.cxi"):
        pio.load(tmp_path / "d.txt")
    with pytest.raises(DatasetError, match=r"\.npz, \.cxi"):
        pio.save(make_ds(), tmp_path / "d.h5")
    assert listdir(tmp_path) == []


# ---------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("ext", [".npz", ".cxi"])
def test_invalid_dataset_writes_nothing(tmp_path: Path, ext: str) -> None:
    ds = make_ds()
    ds.diffraction = ds.diffraction.astype(np.complex64)
    with pytest.raises(DatasetError):
        pio.save(ds, tmp_path / f"d{ext}")
    assert listdir(tmp_path) == []


def test_writer_failure_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = np.lib.format.write_array

    def failing(fh, arr, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        return real(fh, arr, **kw)

    monkeypatch.setattr(np.lib.format, "write_array", failing)
    with pytest.raises(OSError, match="disk full"):
        pio.write_npz(make_ds(), tmp_path / "d.npz")
    assert listdir(tmp_path) == []


def test_writer_failure_keeps_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d.npz"
    pio.write_npz(make_ds(seed=1), path)
    before = path.read_bytes()
    monkeypatch.setattr(pio, "_write_npz_members", lambda fh, arrays: (fh.write(b"part"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        pio.write_npz(make_ds(seed=2), path)
    assert path.read_bytes() == before
    assert listdir(tmp_path) == ["d.npz"]


def test_cxi_writer_failure_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    from ptychobench.data import cxi

    monkeypatch.setattr(cxi, "metadata_json", boom)
    with pytest.raises(RuntimeError):
        pio.write_cxi(make_ds(), tmp_path / "d.cxi")
    assert listdir(tmp_path) == []
    monkeypatch.undo()

    real_create = h5py.Group.create_dataset

    def failing_create(self, name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if "ptychobench" in self.name or name.startswith("/entry_1/sample_1"):
            raise RuntimeError("midway")
        return real_create(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create)
    with pytest.raises(RuntimeError, match="midway"):
        pio.write_cxi(make_ds(), tmp_path / "d.cxi")
    assert listdir(tmp_path) == []


def test_atomic_open_text(tmp_path: Path) -> None:
    with pio.atomic_open(tmp_path / "sub" / "a.txt", "w") as fh:
        fh.write("hi\n")
    assert (tmp_path / "sub" / "a.txt").read_text() == "hi\n"
    with pytest.raises(ValueError), pio.atomic_open(tmp_path / "sub" / "b.txt", "w") as fh:
        fh.write("partial")
        raise ValueError("stop")
    assert listdir(tmp_path / "sub") == ["a.txt"]


def test_add_parent(tmp_path: Path) -> None:
    pio.save(make_ds(), tmp_path / "full.npz")
    meta: dict = {}
    pio.add_parent(meta, tmp_path / "full.npz")
    pio.add_parent(meta, tmp_path / "full.npz")
    assert meta == {
        "parents": [{"file": "full.npz", "sha256": pio.sha256_file(tmp_path / "full.npz")}]
    }
    assert len(meta["parents"][0]["sha256"]) == 64
