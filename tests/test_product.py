"""Tests of Ptychodus product files (HDF5 / NPZ): layout, conventions, conversions, errors."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ptychobench.data import io as pio
from ptychobench.data import product as pmod
from ptychobench.data.dataset import DatasetError, PtychoDataset
from ptychobench.data.product import (
    Product,
    dataset_to_product,
    is_product,
    product_coords,
    product_object,
    product_probe,
    product_to_reconstruction,
    read_product,
    reconstruction_to_product,
    write_product,
)
from ptychobench.data.recon import Reconstruction
from ptychobench.physics.farfield import intensity
from ptychobench.physics.geometry import Geometry, geometry_of, probe_centre_offset

N = 32
EXTS = (".h5", ".npz")


@pytest.fixture(scope="module")
def sim() -> PtychoDataset:
    from ptychobench.simulate import simulate

    ds = simulate(N=N, object="grf", object_size=96, dose=1e4, step_px=8)
    if not ds.metadata.get("geometry"):
        ds.metadata["geometry"] = Geometry.default(N).to_metadata()
    return ds


@pytest.fixture
def ds(sim: PtychoDataset) -> PtychoDataset:
    return sim.copy()


def ptychodus_io(ext: str):
    """Ptychodus' own product reader/writer plugin for a suffix (skips if not importable)."""
    h5mod = pytest.importorskip(
        "ptychodus.plugins.h5_product_file", reason="ptychodus H5 product plugin not importable"
    )
    npzmod = pytest.importorskip(
        "ptychodus.plugins.npz_product_file", reason="ptychodus NPZ product plugin not importable"
    )
    return h5mod.H5ProductFileIO() if ext == ".h5" else npzmod.NPZProductFileIO()


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def pixel(ds: PtychoDataset) -> tuple[float, float]:
    geo = geometry_of(ds.metadata, ds.N)
    return geo.object_pixel_x_m, geo.object_pixel_y_m


# ---------------------------------------------------------------------------- our round trip


@pytest.mark.parametrize("ext", EXTS)
def test_dataset_product_roundtrip(tmp_path: Path, ds: PtychoDataset, ext: str) -> None:
    pr = dataset_to_product(ds)
    path = tmp_path / f"p{ext}"
    write_product(pr, path)
    back = read_product(path)
    dx, dy = pixel(ds)
    geo = geometry_of(ds.metadata, ds.N)
    # positions: (x - 1/2) * dx for N = 32 (probe-array centre, origin at pixel (0, 0))
    assert probe_centre_offset(N) == 0.5
    np.testing.assert_allclose(back.x_m, (ds.xcoords - 0.5) * dx, rtol=1e-12, atol=0)
    np.testing.assert_allclose(back.y_m, (ds.ycoords - 0.5) * dy, rtol=1e-12, atol=0)
    assert np.array_equal(back.x_m, pr.x_m) and np.array_equal(back.y_m, pr.y_m)
    assert np.array_equal(back.indexes, np.arange(ds.n))
    # probe on the photon scale, object = truth, both complex64
    assert back.probe.dtype == np.complex64 and back.object.dtype == np.complex64
    assert np.array_equal(back.probe, pr.probe) and np.array_equal(back.object, pr.object)
    np.testing.assert_allclose(back.probe, ds.probeGuess * ds.metadata["scale"], rtol=1e-6)
    assert np.array_equal(back.object, ds.objectGuess)
    power = float(np.square(np.abs(back.probe.astype(np.complex128))).sum())
    assert back.probe_photon_count == pytest.approx(power, rel=1e-12)
    assert power == pytest.approx(
        ds.metadata["scale"] ** 2 * float(np.square(np.abs(ds.probeGuess)).sum()), rel=1e-5
    )
    # pixel sizes, centre, energy, distance
    assert back.object_pixel_x_m == dx and back.object_pixel_y_m == dy
    assert back.probe_pixel_x_m == dx and back.probe_pixel_y_m == dy
    assert back.object_center_x_m == pytest.approx(47.5 * dx, rel=1e-12)
    assert back.object_center_y_m == pytest.approx(47.5 * dy, rel=1e-12)
    assert back.energy_eV == geo.energy_ev and back.detector_distance_m == geo.detector_distance_m
    assert back.name == pr.name and back.comments == pr.comments
    assert back.source == str(path)
    # our coordinates come back from the metres
    x, y = product_coords(back)
    np.testing.assert_allclose(x, ds.xcoords, atol=1e-9)
    np.testing.assert_allclose(y, ds.ycoords, atol=1e-9)
    assert is_product(path)
    assert np.array_equal(product_probe(path), back.probe)
    assert np.array_equal(product_object(path), back.object)


def test_h5_layout(tmp_path: Path, ds: PtychoDataset) -> None:
    path = tmp_path / "p.h5"
    write_product(dataset_to_product(ds), path)
    with h5py.File(path, "r") as f:
        for key in (
            "name",
            "comments",
            "detector_object_distance_m",
            "photon_energy_eV",
            "probe_photon_count",
            "exposure_time_s",
            "mass_attenuation_m2_per_kg",
            "tomography_angle_deg",
            "focus_object_distance_m",
            "tilt_angle_deg",
            "far_field",
        ):
            assert key in f.attrs, key
        assert f["probe"].shape == (1, 1, N, N) and f["probe"].dtype == np.complex64
        assert f["object"].shape == (1, 96, 96)
        assert set(f["probe"].attrs) == {"pixel_width_m", "pixel_height_m"}
        assert set(f["object"].attrs) == {
            "center_x_m",
            "center_y_m",
            "pixel_width_m",
            "pixel_height_m",
        }
        assert f["probe_position_x_m"].shape == (ds.n,)
        assert f["object_layer_spacing_m"].shape == (0,)
        assert f["loss_epochs"].shape == (0,) and f["loss_values"].shape == (0,)


def test_npz_has_no_pickle(tmp_path: Path, ds: PtychoDataset) -> None:
    path = tmp_path / "p.npz"
    write_product(dataset_to_product(ds), path)
    with np.load(path, allow_pickle=False) as f:
        assert not any(f[k].dtype.hasobject for k in f.files)
        assert str(f["name"]) == "ptychobench"
        assert {"probe_pixel_width_m", "object_center_x_m", "object_pixel_height_m"} <= set(f.files)


# ---------------------------------------------------------------------------- Ptychodus reads ours


@pytest.mark.parametrize("ext", EXTS)
def test_ptychodus_reads_our_product(tmp_path: Path, ds: PtychoDataset, ext: str) -> None:
    io = ptychodus_io(ext)
    pr = dataset_to_product(ds)
    path = tmp_path / f"p{ext}"
    write_product(pr, path)
    theirs = io.read(path)
    dx, dy = pixel(ds)
    positions = theirs.probe_positions
    assert np.array_equal(positions.get_coordinates_x_m(), pr.x_m)
    assert np.array_equal(positions.get_coordinates_y_m(), pr.y_m)
    assert np.array_equal(theirs.probes.get_array()[0, 0], pr.probe)
    assert np.array_equal(theirs.object_.get_layer(0), pr.object)
    geom = theirs.object_.get_geometry()
    assert geom.pixel_width_m == dx and geom.pixel_height_m == dy
    assert theirs.probes.get_pixel_geometry().width_m == dx
    assert theirs.metadata.photon_energy_eV == pr.energy_eV
    assert theirs.metadata.detector_distance_m == pr.detector_distance_m
    # Ptychodus puts the probe array's centre (pixel (N-1)/2) on object pixel x - 1/2: the pixel
    # that sits on our patch pixel N//2 is exactly our coordinate x.
    px = geom.map_probe_positions_to_object_x_px(positions)
    py = geom.map_probe_positions_to_object_y_px(positions)
    off = 0.5  # N // 2 - (N - 1) / 2 for N = 32, written out (not taken from the module)
    assert np.abs(px + off - ds.xcoords).max() < 1e-6
    assert np.abs(py + off - ds.ycoords).max() < 1e-6
    # the object pixel Ptychodus puts at the world position of our pixel j is j
    obj_pos = geom.map_coordinates_probe_to_object(type(positions[0])(0, 10 * dx, 20 * dy))
    assert obj_pos.x_px == pytest.approx(10, abs=1e-9) and obj_pos.y_px == pytest.approx(
        20, abs=1e-9
    )


def test_ptychodus_cuts_our_patches(tmp_path: Path, ds: PtychoDataset) -> None:
    """Ptychodus' own patch extraction at its mapped positions returns our truth patches ``Y``."""
    io = ptychodus_io(".h5")
    from ptychodus.api.interpolate import BarycentricArrayInterpolator

    path = tmp_path / "p.h5"
    write_product(dataset_to_product(ds), path)
    theirs = io.read(path)
    geom = theirs.object_.get_geometry()
    xs = geom.map_probe_positions_to_object_x_px(theirs.probe_positions)
    ys = geom.map_probe_positions_to_object_y_px(theirs.probe_positions)
    # bilinear patches read one sample past the window: pad so edge positions fit
    interp = BarycentricArrayInterpolator(np.pad(theirs.object_.get_layer(0), ((0, 2), (0, 2))))
    err = max(
        np.abs(interp.get_patch(x, y, N, N) - ds.Y[k]).max()
        for k, (x, y) in enumerate(zip(xs, ys, strict=True))
    )
    assert err < 1e-6
    # a naive mapping (Ptychodus pixel = our coordinate) cuts patches half a pixel off
    naive = max(
        np.abs(interp.get_patch(x + 0.5, y + 0.5, N, N) - ds.Y[k]).max()
        for k, (x, y) in enumerate(zip(xs, ys, strict=True))
    )
    assert naive > 0.05


def test_ptychodus_forward_model_matches_ours(tmp_path: Path, ds: PtychoDataset) -> None:
    """Ptychodus simulates our noise-free intensities from our product (up to its amplitude scale).

    Its far-field simulator is a Fresnel transform with the discrete amplitude factor
    ``Fr = dx²/(λz)``: intensities are ``(Fr·N)²`` times the orthonormal ones. The detector is
    moved 1e4× further away here so that the Fresnel transform's quadratic phase (0.5 % at 2 m)
    vanishes and only the geometry of probe and object matters.
    """
    io = ptychodus_io(".h5")
    from ptychodus.api.simulate.diffraction import generate_diffraction_data

    path = tmp_path / "p.h5"
    write_product(dataset_to_product(ds), path)
    theirs = io.read(path)
    z = theirs.metadata.detector_distance_m * 1e4
    far = dataclasses.replace(
        theirs, metadata=dataclasses.replace(theirs.metadata, detector_distance_m=z)
    )
    patterns = np.asarray(generate_diffraction_data(far)._patterns, dtype=np.float64)
    ours = intensity(torch.from_numpy(ds.probeGuess) * torch.from_numpy(ds.Y)).numpy()
    ours = ours.astype(np.float64) * ds.metadata["scale"] ** 2
    dx, _ = pixel(ds)
    fr = dx**2 / (geometry_of(ds.metadata, N).wavelength_m * z)
    ratio = patterns.sum() / ours.sum()
    assert ratio == pytest.approx((fr * N) ** 2, rel=1e-5)
    assert np.abs(patterns / ratio - ours).max() / ours.max() < 1e-5
    # the same product with the positions half a pixel off is a different experiment
    shifted = type(far.probe_positions)(
        [type(p)(p.index, p.x_m + 0.5 * dx, p.y_m + 0.5 * dx) for p in far.probe_positions]
    )
    wrong = np.asarray(
        generate_diffraction_data(dataclasses.replace(far, probe_positions=shifted))._patterns,
        dtype=np.float64,
    )
    assert np.abs(wrong / ratio - ours).max() / ours.max() > 0.05


# ---------------------------------------------------------------------------- we read Ptychodus'


def ptychodus_product(ds: PtychoDataset, layers: int = 1, modes: int = 2):
    """A product built with Ptychodus' own API (2 incoherent probe modes, losses, counts)."""
    pytest.importorskip("ptychodus.api.product", reason="ptychodus API not importable")
    from ptychodus.api.geometry import PixelGeometry
    from ptychodus.api.object import Object, ObjectCenter
    from ptychodus.api.probe import ProbeSequence
    from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
    from ptychodus.api.product import LossValue, Product, ProductMetadata

    rng = np.random.default_rng(5)
    dx, dy = 5e-8, 6e-8
    probe = rng.standard_normal((1, modes, N, N)) + 1j * rng.standard_normal((1, modes, N, N))
    obj = np.exp(1j * rng.uniform(-1, 1, (layers, 40, 50)))
    xs, ys = rng.uniform(-1e-6, 1e-6, 7), rng.uniform(-1e-6, 1e-6, 7)
    return Product(
        metadata=ProductMetadata(
            name="from ptychodus",
            comments="made by the test",
            detector_distance_m=1.5,
            photon_energy_eV=7000.0,
            probe_photon_count=1234.0,
            exposure_time_s=0.1,
            mass_attenuation_m2_per_kg=2.0,
            tomography_angle_deg=3.0,
        ),
        probe_positions=ProbePositionSequence(
            [
                ProbePosition(10 + i, x, y, probe_photon_count=100.0 + i)
                for i, (x, y) in enumerate(zip(xs, ys, strict=True))
            ]
        ),
        probes=ProbeSequence(probe.astype(np.complex64), None, PixelGeometry(dx, dy)),
        object_=Object(
            obj.astype(np.complex64),
            PixelGeometry(dx, dy),
            ObjectCenter(1e-7, -2e-7),
            layer_spacing_m=[1e-6] * (layers - 1),
        ),
        losses=[LossValue(1, 0.5), LossValue(2, 0.25)],
    )


@pytest.mark.parametrize("ext", EXTS)
def test_read_ptychodus_written_product(
    tmp_path: Path, ds: PtychoDataset, ext: str, caplog: pytest.LogCaptureFixture
) -> None:
    io = ptychodus_io(ext)
    theirs = ptychodus_product(ds)
    path = tmp_path / f"theirs{ext}"
    io.write(path, theirs)
    with caplog.at_level(logging.INFO, logger="ptychobench.data.product"):
        pr = read_product(path)
    assert any("mode 0" in r.getMessage() for r in caplog.records)
    assert np.array_equal(pr.probe, theirs.probes.get_array()[0, 0])
    assert np.array_equal(pr.object, theirs.object_.get_layer(0))
    assert np.array_equal(pr.x_m, theirs.probe_positions.get_coordinates_x_m())
    assert np.array_equal(pr.y_m, theirs.probe_positions.get_coordinates_y_m())
    assert np.array_equal(pr.indexes, np.arange(10, 17))
    assert np.array_equal(pr.probe_photon_counts, 100.0 + np.arange(7))
    assert (pr.object_pixel_x_m, pr.object_pixel_y_m) == (5e-8, 6e-8)
    assert (pr.probe_pixel_x_m, pr.probe_pixel_y_m) == (5e-8, 6e-8)
    assert (pr.object_center_x_m, pr.object_center_y_m) == (1e-7, -2e-7)
    assert (pr.energy_eV, pr.detector_distance_m) == (7000.0, 1.5)
    assert (pr.name, pr.comments) == ("from ptychodus", "made by the test")
    assert (pr.probe_photon_count, pr.exposure_time_s) == (1234.0, 0.1)
    assert (pr.mass_attenuation_m2_per_kg, pr.tomography_angle_deg) == (2.0, 3.0)
    assert np.array_equal(pr.loss_epochs, [1, 2]) and np.array_equal(pr.loss_values, [0.5, 0.25])
    assert is_product(path)
    # and our rewrite of it reads back identically through Ptychodus
    again = tmp_path / f"again{ext}"
    write_product(pr, again)
    re = io.read(again)
    assert np.array_equal(re.probes.get_array()[0, 0], pr.probe)
    assert np.array_equal(re.object_.get_layer(0), pr.object)
    assert np.array_equal(re.probe_positions.get_indexes(), pr.indexes)
    assert [(v.epoch, v.value) for v in re.losses] == [(1, 0.5), (2, 0.25)]


@pytest.mark.parametrize("ext", EXTS)
def test_multilayer_refused(tmp_path: Path, ds: PtychoDataset, ext: str) -> None:
    io = ptychodus_io(ext)
    path = tmp_path / f"ml{ext}"
    io.write(path, ptychodus_product(ds, layers=2))
    with pytest.raises(DatasetError) as exc:
        read_product(path)
    msg = one_line(exc)
    assert str(path) in msg and "'object'" in msg and "2 layers" in msg


def test_legacy_energy_name(tmp_path: Path, ds: PtychoDataset) -> None:
    path = tmp_path / "old.h5"
    write_product(dataset_to_product(ds), path)
    with h5py.File(path, "a") as f:
        energy = f.attrs.pop("photon_energy_eV")
        f.attrs["probe_energy_eV"] = energy
    assert read_product(path).energy_eV == energy == 8800.0


# ---------------------------------------------------------------------------- reconstructions


def test_truth_back_in_frame(ds: PtychoDataset) -> None:
    rec = product_to_reconstruction(dataset_to_product(ds), ds)
    assert rec.reconstructed_object.shape == ds.frame_shape
    assert rec.reconstructed_object.dtype == np.complex64
    assert np.abs(rec.reconstructed_object - ds.objectGuess).max() < 1e-6
    assert rec.coverage.dtype == np.float32 and rec.coverage.min() == 1.0
    assert rec.metadata["object_pixel_x_m"] == pixel(ds)[0]
    assert rec.metadata["positions_max_offset_px"] < 1e-9
    assert rec.metadata["object_offset_px"] == pytest.approx([0.0, 0.0], abs=1e-9)
    rec.validate("test", ds.frame_shape)


def test_cropped_object_lands_by_its_centre(tmp_path: Path, ds: PtychoDataset) -> None:
    """A sub-region written with its own centre lands exactly where it came from."""
    dx, dy = pixel(ds)
    crop = ds.objectGuess[10:60, 20:90]
    pr = dataset_to_product(ds)
    pr = dataclasses.replace(
        pr,
        object=crop,
        object_center_x_m=(20 + (crop.shape[1] - 1) / 2) * dx,
        object_center_y_m=(10 + (crop.shape[0] - 1) / 2) * dy,
    )
    path = tmp_path / "crop.npz"
    write_product(pr, path)
    rec = product_to_reconstruction(read_product(path), ds)
    assert rec.metadata["source"] == str(path)
    expected = np.zeros(ds.frame_shape, np.float32)
    expected[10:60, 20:90] = 1
    assert np.array_equal(rec.coverage, expected)
    assert np.array_equal(rec.reconstructed_object[10:60, 20:90], crop)
    assert np.all(rec.reconstructed_object[expected == 0] == 0)


def test_half_pixel_centre_interpolates(ds: PtychoDataset) -> None:
    dx, _ = pixel(ds)
    pr = dataset_to_product(ds)
    pr = dataclasses.replace(pr, object_center_x_m=pr.object_center_x_m + 0.5 * dx)
    rec = product_to_reconstruction(pr, ds)
    truth = ds.objectGuess
    # our column j reads the product at column j - 1/2: the mean of columns j-1 and j
    np.testing.assert_allclose(
        rec.reconstructed_object[:, 1:], (truth[:, :-1] + truth[:, 1:]) / 2, atol=1e-6
    )
    assert rec.coverage[:, 0].max() == 0 and rec.coverage[:, 1:].min() == 1


def test_reconstruction_to_product(tmp_path: Path, ds: PtychoDataset) -> None:
    rng = np.random.default_rng(1)
    obj = np.exp(1j * rng.uniform(-1, 1, ds.frame_shape)).astype(np.complex64)
    rec = Reconstruction(obj, np.ones(ds.frame_shape, np.float32), {"arm": "X"}, None)
    pr = reconstruction_to_product(rec, ds)
    assert pr.name == "X"
    assert np.array_equal(pr.object, obj)
    np.testing.assert_allclose(pr.probe, ds.probeGuess * ds.metadata["scale"], rtol=1e-6)
    probe = (rng.standard_normal((N, N)) + 1j).astype(np.complex64)
    scale = ds.metadata["scale"]
    # an arm's probe is in our units: it goes onto the photon scale like probeGuess ...
    rec2 = dataclasses.replace(rec, reconstructed_probe=probe)
    pr2 = reconstruction_to_product(rec2, ds)
    np.testing.assert_allclose(pr2.probe, probe * scale, rtol=1e-6)
    assert pr2.probe_photon_count == pytest.approx(
        scale**2 * float(np.square(np.abs(probe.astype(np.complex128))).sum()), rel=1e-6
    )
    # ... with the scale the arm fitted with when it records one
    rec3 = dataclasses.replace(rec2, metadata={"arm": "X", "probe_photon_scale": 2.0})
    np.testing.assert_allclose(reconstruction_to_product(rec3, ds).probe, 2 * probe, rtol=1e-6)
    path = tmp_path / "rec.h5"
    write_product(pr2, path)
    back = product_to_reconstruction(read_product(path), ds)
    assert np.array_equal(back.reconstructed_object, obj)
    np.testing.assert_allclose(back.reconstructed_probe, probe, rtol=1e-5, atol=1e-6)
    assert back.metadata["probe_photon_scale"] == scale


def test_probe_scale_fallback(ds: PtychoDataset) -> None:
    del ds.metadata["scale"]
    pr = dataset_to_product(ds)
    photons = float(np.square(ds.diffraction.astype(np.float64)).sum(axis=(1, 2)).mean())
    assert float(np.square(np.abs(pr.probe.astype(np.complex128))).sum()) == pytest.approx(
        photons, rel=1e-5
    )


# ---------------------------------------------------------------------------- errors


def test_pixel_size_mismatch(ds: PtychoDataset) -> None:
    dx, _ = pixel(ds)
    pr = dataclasses.replace(dataset_to_product(ds), object_pixel_x_m=dx * 1.01)
    with pytest.raises(DatasetError) as exc:
        product_to_reconstruction(pr, ds)
    msg = one_line(exc)
    assert f"{dx:.9g}" in msg and f"{dx * 1.01:.9g}" in msg and "object_pixel_width_m" in msg
    # within 1e-6 relative is accepted
    ok = dataclasses.replace(dataset_to_product(ds), object_pixel_x_m=dx * (1 + 1e-7))
    assert product_to_reconstruction(ok, ds).coverage.sum() > 0


def test_missing_geometry(ds: PtychoDataset) -> None:
    pr = dataset_to_product(ds)
    del ds.metadata["geometry"]
    for call in (lambda: dataset_to_product(ds), lambda: product_to_reconstruction(pr, ds)):
        with pytest.raises(DatasetError) as exc:
            call()
        assert "geometry" in one_line(exc)


def test_missing_probe(ds: PtychoDataset) -> None:
    ds.probeGuess = None
    with pytest.raises(DatasetError) as exc:
        dataset_to_product(ds)
    assert "probeGuess" in one_line(exc)


@pytest.mark.parametrize(
    "name, content",
    [
        ("junk.h5", b"this is not a product\n" * 10),
        ("trunc.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 40),
        ("junk.npz", b"PK\x03\x04 broken zip"),
        ("empty.npz", b""),
    ],
)
def test_corrupt_file(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError) as exc:
        read_product(path)
    assert str(path) in one_line(exc)
    assert not is_product(path)


def test_non_product_files(tmp_path: Path, ds: PtychoDataset) -> None:
    npz, cxi = tmp_path / "d.npz", tmp_path / "d.cxi"
    small = ds.select(np.arange(4))
    pio.save(small, npz)
    pio.save(small, cxi)
    for path in (npz, cxi):
        assert not is_product(path)
        with pytest.raises(DatasetError) as exc:
            read_product(path)
        msg = one_line(exc)
        assert str(path) in msg and "missing key" in msg
    with pytest.raises(DatasetError) as exc:
        read_product(tmp_path / "nope.h5")
    assert "no such file" in one_line(exc)
    assert not is_product(tmp_path / "nope.h5")


def test_failed_write_leaves_nothing(
    tmp_path: Path, ds: PtychoDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    pr = dataset_to_product(ds)
    bad = dataclasses.replace(pr, y_m=pr.y_m[:-1])
    for path in (tmp_path / "bad.h5", tmp_path / "bad.npz"):
        with pytest.raises(DatasetError) as exc:
            write_product(bad, path)
        assert "probe_position_y_m" in one_line(exc)
    with pytest.raises(DatasetError) as exc:
        write_product(pr, tmp_path / "bad.txt")
    assert ".txt" in one_line(exc)
    assert os.listdir(tmp_path) == []
    # a failure while writing leaves an existing file untouched and no temporary behind
    good = tmp_path / "p.npz"
    write_product(pr, good)
    before = good.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pmod.np, "savez", boom)
    with pytest.raises(OSError):
        write_product(dataclasses.replace(pr, name="other"), good)
    assert good.read_bytes() == before and os.listdir(tmp_path) == ["p.npz"]


def test_product_validate_messages() -> None:
    pr = Product(
        probe=np.ones((4, 4), np.complex64),
        object=np.ones((8, 8), np.float32),
        x_m=[0.0],
        y_m=[0.0],
        object_pixel_x_m=1e-8,
        object_pixel_y_m=1e-8,
        object_center_x_m=0.0,
        object_center_y_m=0.0,
        probe_pixel_x_m=1e-8,
        probe_pixel_y_m=1e-8,
        energy_eV=8000.0,
        detector_distance_m=1.0,
    )
    with pytest.raises(DatasetError) as exc:
        pr.validate("f.h5")
    assert "'object'" in one_line(exc) and "complex" in one_line(exc)
    pr.object = pr.object.astype(np.complex64)
    pr.validate("f.h5")
    pr.energy_eV = -1.0
    with pytest.raises(DatasetError) as exc:
        pr.validate("f.h5")
    assert "photon_energy_eV" in one_line(exc)
