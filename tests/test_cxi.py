"""CXI 1.6 files checked against the real readers (CDTools, Ptychodus) and our own reader."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_same, make_dataset

from ptychobench.data import cxi
from ptychobench.data import io as pio
from ptychobench.data.dataset import DatasetError, PtychoDataset
from ptychobench.physics import intensity
from ptychobench.physics.geometry import EV_J, Geometry, geometry_of, probe_centre_offset
from ptychobench.simulate import simulate

N = 32
DELTA = 0.5  # our patch centre N//2 minus the probe array's centre (N-1)/2, for even N
TRANSLATION = "/entry_1/sample_1/geometry_1/translation"
DATA = "/entry_1/instrument_1/detector_1/data"


@pytest.fixture(scope="module")
def sim() -> PtychoDataset:
    """Integer raster positions: every interpolation model cuts exactly the same patches."""
    return simulate(N=N, object="grf", object_size=96, dose=1e4, step_px=8)


@pytest.fixture(scope="module")
def sim_jitter() -> PtychoDataset:
    """Sub-pixel positions (raster ± 0.4 px)."""
    return simulate(N=N, object="grf", object_size=96, dose=1e4, step_px=8, jitter_px=0.4)


@pytest.fixture
def written(tmp_path: Path, sim: PtychoDataset) -> Path:
    path = tmp_path / "d.cxi"
    pio.save(sim, path)
    return path


def _counts(ds: PtychoDataset) -> np.ndarray:
    return np.rint(ds.diffraction.astype(np.float64) ** 2)


def _expected_counts(ds: PtychoDataset) -> np.ndarray:
    """Our forward model: s² |F(P · Y)|² (orthonormal FFT, DC at N//2)."""
    P = torch.as_tensor(ds.probeGuess)[None]
    return ds.metadata["scale"] ** 2 * intensity(P * torch.as_tensor(ds.Y)).double().numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------------------- layout


def test_layout_units_and_links(written: Path, sim: PtychoDataset) -> None:
    geo = geometry_of(sim.metadata, N)
    dx, dy = geo.object_pixel_x_m, geo.object_pixel_y_m
    with h5py.File(written, "r") as f:
        assert f["cxi_version"][()] == 160 and f["number_of_entries"][()] == 1
        data = f[DATA]
        assert data.dtype == np.int32 and data.attrs["quantity"] == "counts"
        assert np.array_equal(data[()], _counts(sim))
        for link, target in (
            ("/entry_1/data_1/data", DATA),
            ("/entry_1/data_1/translation", TRANSLATION),
            ("/entry_1/instrument_1/detector_1/translation", TRANSLATION),
            ("/entry_1/instrument_1/source_1/illumination", "/entry_1/image_1/data"),
        ):
            assert f.get(link, getlink=True).path == target
        src = f["/entry_1/instrument_1/source_1"]
        assert math.isclose(src["energy"][()], 8800.0 * EV_J, rel_tol=1e-15)
        assert math.isclose(src["wavelength"][()], geo.wavelength_m, rel_tol=1e-15)
        det = f["/entry_1/instrument_1/detector_1"]
        assert det["distance"][()] == 2.0
        assert det["x_pixel_size"][()] == det["y_pixel_size"][()] == 75e-6
        assert np.array_equal(det["basis_vectors"][()], [[0, -75e-6, 0], [-75e-6, 0, 0]])
        corner = det["corner_position"][()]
        # centre of pixel (i, j) = corner + (i + ½) b0 + (j + ½) b1 is on the beam at (N//2, N//2)
        b = det["basis_vectors"][()]
        assert np.allclose(corner + (N // 2 + 0.5) * (b[0] + b[1]), [0, 0, 2.0], atol=1e-18)
        t = f[TRANSLATION]
        assert t.attrs["units"] == "m" and t.dtype == np.float64
        assert np.array_equal(t[:, 0], (sim.xcoords - DELTA) * dx)
        assert np.array_equal(t[:, 1], (sim.ycoords - DELTA) * dy)
        assert np.array_equal(t[:, 2], np.zeros(sim.n))
        probe = f["/entry_1/image_1/data"]
        s = sim.metadata["scale"]
        assert probe.attrs["photon_scale"] == s
        assert np.array_equal(
            probe[()], (sim.probeGuess.astype(np.complex128) * s).astype(np.complex64)
        )
        # photon scale: Σ|sP·Y|² (= Σ of the expected counts, Parseval) averages to the dose
        exits = probe[()].astype(np.complex128) * sim.Y
        mean_photons = float(np.mean(np.sum(np.abs(exits) ** 2, axis=(1, 2))))
        assert mean_photons == pytest.approx(sim.metadata["dose"], rel=1e-6)
        assert np.allclose(f["/entry_1/image_1/image_size"][()], [N * dx, N * dy, 0], rtol=1e-15)
        assert np.array_equal(f["/entry_1/image_2/data"][()], sim.objectGuess)
        assert np.allclose(f["/entry_1/image_2/image_size"][()], [96 * dx, 96 * dy, 0], rtol=1e-15)
        assert f["/entry_1/ptychodus/object_center_x_m"][()] == pytest.approx(47.5 * dx, rel=1e-15)
        pb = f["/entry_1/ptychobench"]
        assert np.array_equal(pb["probeGuess"][()], sim.probeGuess)
        assert np.array_equal(pb["xcoords"][()], sim.xcoords)
        assert "diffraction" not in pb  # recovered exactly from the counts


# ---------------------------------------------------------------------------------- CDTools


def test_cdtools_reads_our_counts_exactly(written: Path, sim: PtychoDataset) -> None:
    cdt = pytest.importorskip("cdtools")
    d = cdt.datasets.Ptycho2DDataset.from_cxi(str(written))
    patterns = d.patterns.numpy()
    assert len(d) == sim.n
    assert np.array_equal(patterns, _counts(sim))
    mean_photons = patterns.astype(np.float64).sum(axis=(1, 2)).mean()
    assert mean_photons == pytest.approx(sim.metadata["realised_mean_photons"], abs=1e-9)
    assert d.mask.all()  # no mask written: every pixel live
    assert float(d.wavelength) == np.float32(geometry_of(sim.metadata, N).wavelength_m)


def _cdtools_pixels(d, basis=None, wavelength=None, distance=None, translations=None, dtype=None):
    """CDTools' own conversion: exit_wave_geometry → obj basis; translations_to_pixel → (i, j)."""
    from cdtools.tools import initializers, interactions

    basis = torch.as_tensor(d.detector_geometry["basis"] if basis is None else basis)
    tr = d.translations if translations is None else torch.as_tensor(translations)
    if dtype is not None:
        basis, tr = basis.to(dtype), tr.to(dtype)
    obj_basis = initializers.exit_wave_geometry(
        basis,
        d.patterns.shape[-2:],
        d.wavelength if wavelength is None else wavelength,
        d.detector_geometry["distance"] if distance is None else distance,
    )
    return interactions.translations_to_pixel(obj_basis.to(tr.dtype), tr).double().numpy()


def test_cdtools_translations_convert_to_our_positions(written: Path, sim: PtychoDataset) -> None:
    cdt = pytest.importorskip("cdtools")
    d = cdt.datasets.Ptycho2DDataset.from_cxi(str(written))
    with h5py.File(written, "r") as f:
        T = f[TRANSLATION][()]
        wavelength = f["/entry_1/instrument_1/source_1/wavelength"][()]
    # CDTools reads the CXI sample translation and negates it into a probe translation
    assert np.array_equal(d.translations.numpy(), -T.astype(np.float32))
    # its pixel (i, j) is (y − δ, x − δ): rows along +y, columns along +x, offset −δ
    # (a) in float64, CDTools' functions on the file's float64 values: 1e-6 px (found ~1e-14)
    pix = _cdtools_pixels(
        d, wavelength=wavelength, distance=2.0, translations=-T, dtype=torch.float64
    )
    assert np.abs(pix[:, 0] - (sim.ycoords - DELTA)).max() < 1e-6
    assert np.abs(pix[:, 1] - (sim.xcoords - DELTA)).max() < 1e-6
    # (b) CDTools' own float32 pipeline (float32 wavelength, distance, translations): the same
    # up to float32 rounding (found ~4e-6 px over a 64 px scan; bound 2^-21 relative)
    pix32 = _cdtools_pixels(d)
    bound = 2.0**-21 * np.abs(pix32).max()
    for k, ours in ((0, sim.ycoords), (1, sim.xcoords)):
        assert np.abs(pix32[:, k] - (ours - DELTA)).max() < bound


def _cdtools_model_on_truth(path: Path, ds: PtychoDataset):
    """FancyPtycho.from_dataset with its probe = our photon-scaled probe (read from the file) and
    its object = our truth placed in its frame; returns (model, dataset, object offset)."""
    cdt = pytest.importorskip("cdtools")
    d = cdt.datasets.Ptycho2DDataset.from_cxi(str(path))
    model = cdt.models.FancyPtycho.from_dataset(d)  # obj_padding=200
    with h5py.File(path, "r") as f:
        probe = torch.as_tensor(f["/entry_1/instrument_1/source_1/illumination"][()])
    model.probe.data = (probe / model.probe_norm)[None]  # it stores probe / probe_norm
    model.background.data.zero_()
    # CDTools cuts obj[i - m_i : ..., j - m_j : ...] at pixel (i, j) = (y − δ, x − δ), m its
    # min_translation = min(pix) − 200; ours starts at (y − N//2, x − N//2): our object sits at
    # offset (200 + N//2 − δ + m_i − min(pix_i)) = 200 + N//2 − min(y) in its frame.
    oi = int(round(200 + N // 2 - ds.ycoords.min()))
    oj = int(round(200 + N // 2 - ds.xcoords.min()))
    H, W = model.obj.shape
    obj = np.zeros((H, W), np.complex64)
    h, w = ds.objectGuess.shape
    obj[oi : oi + h, oj : oj + w] = ds.objectGuess
    model.obj.data = torch.as_tensor(obj)
    return model, d


def _cdtools_forward(model, d) -> np.ndarray:
    (index, translations), _ = d[:]
    with torch.no_grad():
        return model.forward(index, translations).double().numpy()


def test_cdtools_forward_model_reproduces_our_expected_counts(
    tmp_path: Path, sim: PtychoDataset
) -> None:
    pio.save(sim, tmp_path / "d.cxi")
    model, d = _cdtools_model_on_truth(tmp_path / "d.cxi", sim)
    expected = _expected_counts(sim)
    got = _cdtools_forward(model, d)
    rel = _rel(got, expected)
    assert rel < 1e-4, rel  # found ~2e-7 (float32)
    obj = model.obj.data.clone()
    for axis in (0, 1):  # control: the truth shifted by one pixel must not fit
        model.obj.data = torch.roll(obj, 1, dims=axis)
        assert _rel(_cdtools_forward(model, d), expected) > 1e-2  # found ~0.12


def test_cdtools_subpixel_positions_fit_best_at_zero_offset(
    tmp_path: Path, sim_jitter: PtychoDataset
) -> None:
    """Sub-pixel positions: CDTools sinc-shifts the probe, we Fourier-shift the object, so the
    models differ slightly (~2e-3); the misfit must still be smallest at no extra offset."""
    ds = sim_jitter
    assert np.any(ds.xcoords != np.round(ds.xcoords))
    pio.save(ds, tmp_path / "d.cxi")
    model, d = _cdtools_model_on_truth(tmp_path / "d.cxi", ds)
    expected = _expected_counts(ds)
    steps = np.array([-0.04, 0.0, 0.04])
    for axis in (0, 1):
        rels = []
        for step in steps:
            off = torch.zeros_like(model.translation_offsets.data)
            off[:, axis] = float(step)
            model.translation_offsets.data = off
            rels.append(_rel(_cdtools_forward(model, d), expected))
        a, b, _ = np.polyfit(steps, rels, 2)
        vertex = -b / (2 * a)
        assert rels[1] < 5e-3 and rels[1] < min(rels[0], rels[2])
        assert abs(vertex) < 5e-3, vertex  # found < 1e-3 px
    model.translation_offsets.data.zero_()


def test_cdtools_to_cxi_file_is_read(tmp_path: Path) -> None:
    """A file CDTools writes itself (float32, no probe, no units): read with probe None and
    positions equal to CDTools' own pixel translations up to a whole-pixel shift and δ."""
    cdt = pytest.importorskip("cdtools")
    rng = np.random.default_rng(0)
    n = 20
    translations = np.zeros((n, 3), np.float32)
    translations[:, :2] = rng.uniform(-3e-6, 3e-6, (n, 2))
    patterns = rng.poisson(5.0, (n, N, N)).astype(np.float32)  # float data, integral values
    basis = np.array([[0, -75e-6, 0], [-75e-6, 0, 0]], dtype=np.float32).T
    d = cdt.datasets.Ptycho2DDataset(
        translations,
        patterns,
        wavelength=1.5e-10,
        detector_geometry={"distance": 2.0, "basis": basis},
    )
    path = tmp_path / "cdtools.cxi"
    d.to_cxi(str(path))
    ds = pio.load(path)
    assert ds.probeGuess is None
    assert np.array_equal(ds.diffraction, np.sqrt(patterns.astype(np.float64)).astype(np.float32))
    pix = _cdtools_pixels(d, wavelength=float(d.wavelength), dtype=torch.float64)
    off_y, off_x = ds.ycoords - pix[:, 0], ds.xcoords - pix[:, 1]
    assert np.ptp(off_y) < 1e-6 and np.ptp(off_x) < 1e-6
    # the offset is δ plus a whole number of pixels (min position moved into [N//2, N//2 + 1))
    for off in (off_y, off_x):
        assert abs((off[0] - DELTA) - round(off[0] - DELTA)) < 1e-6
    assert N // 2 <= ds.xcoords.min() < N // 2 + 1 and N // 2 <= ds.ycoords.min() < N // 2 + 1
    pix32 = _cdtools_pixels(d)  # CDTools' float32 pipeline
    assert np.ptp(ds.xcoords - pix32[:, 1]) < 1e-5
    geo = geometry_of(ds.metadata, N)
    assert geo.wavelength_m == pytest.approx(1.5e-10, rel=1e-7)
    ops = [t["op"] for t in ds.metadata["transformations"]]
    assert ops == ["cxi_data_to_amplitude", "cxi_translation_to_pixels"]


def test_our_file_through_cdtools_and_back(
    written: Path, tmp_path: Path, sim: PtychoDataset
) -> None:
    """ours → CDTools from_cxi → CDTools to_cxi → ours: the same patterns and positions (up to a
    whole-pixel origin shift, to CDTools' float32 precision)."""
    cdt = pytest.importorskip("cdtools")
    d = cdt.datasets.Ptycho2DDataset.from_cxi(str(written))
    d.to_cxi(str(tmp_path / "again.cxi"))
    back = pio.load(tmp_path / "again.cxi")
    assert np.array_equal(back.diffraction, sim.diffraction)
    for ours, theirs in ((sim.xcoords, back.xcoords), (sim.ycoords, back.ycoords)):
        shift = theirs - ours
        assert np.ptp(shift) < 2e-5 and abs(shift[0] - round(shift[0])) < 2e-5


# -------------------------------------------------------------------------------- Ptychodus


def test_ptychodus_reads_our_file(written: Path, sim: PtychoDataset) -> None:
    pytest.importorskip("ptychodus")
    from ptychodus.plugins.cxi_file import CXIDiffractionFileReader, CXIProductFileIO

    data = CXIDiffractionFileReader().read(written)
    meta = data.get_metadata()
    assert meta.num_patterns_per_array == [sim.n]
    patterns = np.concatenate([a.get_patterns() for a in data])
    assert np.array_equal(patterns, _counts(sim))
    assert meta.photon_energy_eV == pytest.approx(8800.0, rel=1e-12)
    assert meta.detector_distance_m == 2.0
    assert meta.detector_pixel_geometry.width_m == 75e-6
    assert not np.asarray(data.get_bad_pixels()).any()

    product = CXIProductFileIO().read(written)
    with h5py.File(written, "r") as f:
        T = f[TRANSLATION][()]
        illumination = f["/entry_1/instrument_1/source_1/illumination"][()]
    positions = product.probe_positions
    assert len(positions) == sim.n
    assert np.array_equal(positions.get_coordinates_x_m(), T[:, 0])
    assert np.array_equal(positions.get_coordinates_y_m(), T[:, 1])
    probe = product.probes.get_array()
    assert probe.shape == (1, 1, N, N) and np.array_equal(probe[0, 0], illumination)
    s = sim.metadata["scale"]
    assert np.allclose(
        probe[0, 0], s * sim.probeGuess, rtol=1e-6, atol=1e-6 * np.abs(illumination).max()
    )
    geo = geometry_of(sim.metadata, N)
    assert product.probes.get_pixel_geometry().width_m == pytest.approx(
        geo.object_pixel_x_m, rel=1e-14
    )
    assert np.array_equal(product.object_.get_layer(0), sim.objectGuess)
    # where Ptychodus places each pattern on the object: its object pixel is x − δ (it centres
    # the probe array at (N−1)/2, we at N//2), and it cuts the very patch we cut
    og = product.object_.get_geometry()
    x_px = og.map_probe_positions_to_object_x_px(positions)
    y_px = og.map_probe_positions_to_object_y_px(positions)
    assert np.abs(x_px + DELTA - sim.xcoords).max() < 1e-9
    assert np.abs(y_px + DELTA - sim.ycoords).max() < 1e-9
    pg = product.probes.get_geometry()
    for k, (xp, yp) in enumerate(zip(x_px, y_px, strict=True)):
        b = pg.resolve_patch_bounds(float(xp), float(yp))
        assert abs(b.x_slice.start + b.dx - (sim.xcoords[k] - N // 2)) < 1e-9
        assert abs(b.y_slice.start + b.dy - (sim.ycoords[k] - N // 2)) < 1e-9


def test_ptychodus_places_subpixel_positions(tmp_path: Path, sim_jitter: PtychoDataset) -> None:
    pytest.importorskip("ptychodus")
    from ptychodus.plugins.cxi_file import CXIProductFileIO

    pio.save(sim_jitter, tmp_path / "j.cxi")
    product = CXIProductFileIO().read(tmp_path / "j.cxi")
    og, pg = product.object_.get_geometry(), product.probes.get_geometry()
    starts = []
    for pos in product.probe_positions:
        op = og.map_coordinates_probe_to_object(pos)
        b = pg.resolve_patch_bounds(op.x_px, op.y_px)
        starts.append((b.x_slice.start + b.dx, b.y_slice.start + b.dy))
    starts = np.array(starts)
    assert np.abs(starts[:, 0] - (sim_jitter.xcoords - N // 2)).max() < 1e-9
    assert np.abs(starts[:, 1] - (sim_jitter.ycoords - N // 2)).max() < 1e-9


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("noise", ["poisson", "none"])
def test_npz_cxi_npz_is_bit_exact(tmp_path: Path, noise: str) -> None:
    ds = simulate(
        N=N, object="grf", object_size=96, dose=1e4, step_px=8, jitter_px=0.3, noise=noise
    )
    ds.groups = np.arange(ds.n, dtype=np.int64)[:, None]
    pio.save(ds, tmp_path / "a.npz")
    pio.save(pio.load(tmp_path / "a.npz"), tmp_path / "b.cxi")
    back = pio.load(tmp_path / "b.cxi")
    assert_same(ds, back)
    pio.save(back, tmp_path / "c.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "c.npz").read_bytes()
    with h5py.File(tmp_path / "b.cxi", "r") as f:
        data = f[DATA]
        if noise == "poisson":
            assert data.dtype == np.int32 and data.attrs["quantity"] == "counts"
        else:  # noiseless amplitudes are not sqrt of integers: float64 intensities
            assert data.dtype == np.float64 and data.attrs["quantity"] == "intensity"
            assert np.array_equal(data[()], ds.diffraction.astype(np.float64) ** 2)
    assert np.array_equal(pio.load_probe(tmp_path / "b.cxi"), ds.probeGuess)
    assert np.array_equal(pio.load_object(tmp_path / "b.cxi"), ds.objectGuess)


def test_geometry_less_dataset_keeps_pixels_in_extras_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = make_dataset(n=6, N=8, H=24, W=24, seed=3)
    assert geometry_of(ds.metadata, ds.N) is None
    with caplog.at_level(logging.WARNING):
        pio.save(ds, tmp_path / "g.cxi")
    assert "no geometry" in caplog.text
    with h5py.File(tmp_path / "g.cxi", "r") as f:
        for absent in (
            TRANSLATION,
            "/entry_1/instrument_1/source_1/energy",
            "/entry_1/instrument_1/detector_1/distance",
        ):
            assert absent not in f  # no made-up metres, no pixel-unit translations
        assert f["/entry_1/data_1/data"].shape == (6, 8, 8)
        assert np.array_equal(f["/entry_1/ptychobench/xcoords"][()], ds.xcoords)
    assert_same(ds, pio.load(tmp_path / "g.cxi"))


def test_probe_less_dataset_round_trips_without_illumination(
    tmp_path: Path, sim: PtychoDataset
) -> None:
    ds = sim.copy()
    ds.probeGuess = None
    pio.save(ds, tmp_path / "p.cxi")
    with h5py.File(tmp_path / "p.cxi", "r") as f:
        assert "/entry_1/image_1" not in f
        assert "/entry_1/instrument_1/source_1/illumination" not in f
        assert "/entry_1/image_2/data" in f  # the truth object is not taken for a probe
    back = pio.load(tmp_path / "p.cxi")
    assert back.probeGuess is None
    assert_same(ds, back)


# ---------------------------------------------------------------------------- foreign files


def _foreign(
    path: Path,
    n: int = 9,
    *,
    data=None,
    units=None,
    geometry=True,
    probe=None,
    translation=None,
    mask=None,
    n_translations=None,
) -> np.ndarray:
    """A minimal CXI file as another program writes it; returns the metre translations."""
    rng = np.random.default_rng(4)
    geo = Geometry(8800.0, 2.0, 75e-6, 75e-6, N)
    if translation is None:
        k = n if n_translations is None else n_translations
        translation = np.zeros((k, 3))
        translation[:, :2] = rng.uniform(-2e-6, 2e-6, (k, 2))
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 160
        f["/entry_1/data_1/data"] = (
            rng.poisson(7.0, (n, N, N)).astype(np.uint16) if data is None else data
        )
        if geometry:
            f["/entry_1/instrument_1/source_1/energy"] = geo.energy_j
            f["/entry_1/instrument_1/detector_1/distance"] = 2.0
            f["/entry_1/instrument_1/detector_1/x_pixel_size"] = 75e-6
            f["/entry_1/instrument_1/detector_1/y_pixel_size"] = 75e-6
        t = f.create_dataset(TRANSLATION, data=translation)
        if units is not None:
            t.attrs["units"] = units
        if probe is not None:
            f["/entry_1/instrument_1/source_1/illumination"] = probe
        if mask is not None:
            f["/entry_1/instrument_1/detector_1/mask"] = mask
    return translation


def test_foreign_metres_probe_less_file(tmp_path: Path) -> None:
    T = _foreign(tmp_path / "f.cxi")
    ds = pio.load(tmp_path / "f.cxi")
    assert ds.probeGuess is None and ds.objectGuess is None
    geo = geometry_of(ds.metadata, N)
    assert geo.object_pixel_x_m == pytest.approx(Geometry.default(N).object_pixel_x_m, rel=1e-12)
    x = T[:, 0] / geo.object_pixel_x_m + DELTA
    y = T[:, 1] / geo.object_pixel_y_m + DELTA
    shift = ds.metadata["transformations"][-1]["origin_shift_px"]
    assert np.allclose(ds.xcoords, x + shift[0], atol=1e-9)
    assert np.allclose(ds.ycoords, y + shift[1], atol=1e-9)
    assert N // 2 <= ds.xcoords.min() < N // 2 + 1
    with h5py.File(tmp_path / "f.cxi", "r") as f:
        counts = f["/entry_1/data_1/data"][()]
    assert np.array_equal(ds.diffraction, np.sqrt(counts.astype(np.float64)).astype(np.float32))


def test_foreign_float_intensity_and_illumination(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    inten = rng.uniform(0, 50, (9, N, N))
    probe = (rng.standard_normal((N, N)) + 1j * rng.standard_normal((N, N))).astype(np.complex64)
    _foreign(tmp_path / "f.cxi", data=inten, probe=probe)
    with h5py.File(tmp_path / "f.cxi", "a") as f:
        f["/entry_1/data_1/data"].attrs["quantity"] = "intensity"
    ds = pio.load(tmp_path / "f.cxi")
    assert np.array_equal(ds.diffraction, np.sqrt(inten).astype(np.float32))
    assert np.array_equal(ds.probeGuess, probe)
    assert ds.metadata["scale"] == 1.0  # a CXI illumination is on the photon scale


def test_all_clear_mask_is_fine(tmp_path: Path) -> None:
    _foreign(tmp_path / "f.cxi", mask=np.zeros((N, N), np.uint32))
    assert pio.load(tmp_path / "f.cxi").n == 9


def test_old_layout_still_reads(tmp_path: Path, sim: PtychoDataset) -> None:
    """Layout 1 (before CXI 1.6 compliance): amplitudes in data_1/data, probe at
    source_1/probe, pixel translations, exact copies without the probe."""
    path = tmp_path / "old.cxi"
    with h5py.File(path, "w") as f:
        f["cxi_version"] = np.int64(160)
        d = f.create_dataset("/entry_1/data_1/data", data=sim.diffraction)
        d.attrs["quantity"] = "amplitude"
        d = f.create_dataset(DATA, data=np.square(sim.diffraction, dtype=np.float32))
        d.attrs["quantity"] = "intensity"
        f["/entry_1/instrument_1/source_1/probe"] = sim.probeGuess
        t = f.create_dataset(
            TRANSLATION, data=np.stack([sim.xcoords, sim.ycoords, 0 * sim.xcoords], -1)
        )
        t.attrs["units"] = "pixel"
        for key in ("xcoords", "ycoords", "objectGuess", "Y"):
            f[f"/entry_1/ptychobench/{key}"] = getattr(sim, key)
        f.create_dataset(
            "/entry_1/ptychobench/metadata",
            data=pio.metadata_json(sim.metadata),
            dtype=h5py.string_dtype("utf-8"),
        )
    assert_same(sim, pio.load(path))


# ------------------------------------------------------------------------------- bad input


def _bad_pixel_units(p: Path) -> None:
    _foreign(p, units="pixel", geometry=False)


def _bad_no_units_no_geometry(p: Path) -> None:
    _foreign(p, geometry=False)


def _bad_counts_mismatch(p: Path) -> None:
    _foreign(p, n_translations=8)


def _bad_non_integer(p: Path) -> None:
    _foreign(p, data=np.full((9, N, N), 2.5))


def _bad_missing_data(p: Path) -> None:
    _foreign(p)
    with h5py.File(p, "a") as f:
        del f["/entry_1/data_1/data"]


def _bad_corrupt(p: Path) -> None:
    pio.save(simulate(N=16, object="grf", object_size=48, dose=1e3, step_px=8), p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])


def _bad_not_hdf5(p: Path) -> None:
    p.write_bytes(b"not an HDF5 file\n" * 10)


def _bad_flagged_mask(p: Path) -> None:
    mask = np.zeros((N, N), np.uint32)
    mask[3, 4] = 1
    _foreign(p, mask=mask)


def _bad_exact_copies_disagree(p: Path) -> None:
    pio.save(simulate(N=16, object="grf", object_size=48, dose=1e3, step_px=8), p)
    with h5py.File(p, "a") as f:
        f[TRANSLATION][0, 0] += 0.5 * 2.3e-7  # half a pixel


def _bad_metres_units_other(p: Path) -> None:
    _foreign(p, units="mm")


BAD = [
    ("pixel_units_no_geometry", _bad_pixel_units, ["translation", "pixel"]),
    ("no_units_no_geometry", _bad_no_units_no_geometry, ["translation", "no geometry"]),
    ("count_mismatch", _bad_counts_mismatch, ["translation", "9 translations", "found 8"]),
    ("non_integer_counts", _bad_non_integer, ["data_1/data", "non-integer", "2.5"]),
    ("missing_data", _bad_missing_data, ["data_1/data", "missing"]),
    ("corrupt_hdf5", _bad_corrupt, ["bad.cxi"]),
    ("not_hdf5", _bad_not_hdf5, ["not hdf5"]),
    ("flagged_mask", _bad_flagged_mask, ["detector_1/mask", "1 flagged", "(3, 4)"]),
    ("exact_copies_disagree", _bad_exact_copies_disagree, ["translation", "1e-6 px", "index 0"]),
    ("unknown_units", _bad_metres_units_other, ["translation", "'mm'"]),
]


@pytest.mark.parametrize("name,make,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line_error_nothing_written(tmp_path: Path, name, make, words) -> None:
    src = tmp_path / "bad.cxi"
    make(src)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DatasetError) as err:
        pio.save(pio.load(src), out / "x.npz")  # what `ptychobench convert` does
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(src)), msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    assert os.listdir(out) == []


def test_writer_refuses_malformed_geometry_and_writes_nothing(
    tmp_path: Path, sim: PtychoDataset
) -> None:
    ds = sim.copy()
    ds.metadata["geometry"] = {"energy_eV": 8800.0}
    with pytest.raises(DatasetError, match="metadata.geometry") as err:
        pio.save(ds, tmp_path / "x.cxi")
    assert "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []


def test_translation_helpers_invert(sim_jitter: PtychoDataset) -> None:
    geo = geometry_of(sim_jitter.metadata, N)
    T = cxi.translation_from_coords(sim_jitter.xcoords, sim_jitter.ycoords, geo)
    x, y = cxi.coords_from_translation(T, geo)
    assert np.abs(x - sim_jitter.xcoords).max() < 1e-12
    assert np.abs(y - sim_jitter.ycoords).max() < 1e-12
    # a detector turned by 180° about the beam (basis rows +y, +x) mirrors both axes
    flipped = -cxi._default_basis(geo)
    xf, yf = cxi.coords_from_translation(T, geo, flipped)
    assert np.allclose(xf - DELTA, -(x - DELTA)) and np.allclose(yf - DELTA, -(y - DELTA))
    assert probe_centre_offset(N) == DELTA and probe_centre_offset(33) == 0.0


# ------------------------------------------------------------------ the same, through the CLI


@pytest.mark.parametrize(
    "name,make,words",
    [b for b in BAD if b[0] in ("pixel_units_no_geometry", "count_mismatch", "non_integer_counts")],
    ids=["pixel_units_no_geometry", "count_mismatch", "non_integer_counts"],
)
@pytest.mark.parametrize("command", ["inspect", "convert", "reconstruct"])
def test_cli_refuses_bad_cxi_in_one_line_exit_2_nothing_written(
    tmp_path: Path, name, make, words, command
) -> None:
    from typer.testing import CliRunner

    from ptychobench.cli import app

    src = tmp_path / "bad.cxi"
    make(src)
    out = tmp_path / "out"
    out.mkdir()
    args = {
        "inspect": ["inspect", str(src), "--png", str(out / "x.png")],
        "convert": ["convert", str(src), str(out / "x.npz")],
        "reconstruct": ["reconstruct", str(src), "--out", str(out / "r.npz"), "--epochs", "1"],
    }[command]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {src}"), r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    assert os.listdir(out) == []


def test_probe_less_foreign_cxi_reconstructs_only_with_probe(tmp_path: Path) -> None:
    """A CXI CDTools' to_cxi wrote (metres, no probe): inspect works; reconstruct asks for
    --probe in one line and writes nothing; with --probe (our CXI) pty-chi runs on it."""
    from typer.testing import CliRunner

    from ptychobench.cli import app
    from ptychobench.data.recon import read_reconstruction

    ds = simulate(N=N, object="grf", object_size=96, dose=1e4, step_px=8)
    probe_src = tmp_path / "ours.cxi"
    pio.save(ds, probe_src)
    # their file: CDTools loads ours and writes its own CXI (float32, no probe, no extras)
    cdt = pytest.importorskip("cdtools")
    theirs = tmp_path / "theirs.cxi"
    cdt.datasets.Ptycho2DDataset.from_cxi(str(probe_src)).to_cxi(str(theirs))
    run = CliRunner().invoke
    r = run(app, ["inspect", str(theirs), "--json"])
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["has_probe"] is False and summary["n"] == ds.n
    assert summary["object_pixel_nm"] == pytest.approx(117.409, abs=1e-3)
    out = tmp_path / "r.npz"
    r = run(app, ["reconstruct", str(theirs), "--out", str(out), "--epochs", "2"])
    assert r.exit_code == 2 and "--probe FILE" in r.stderr and "theirs.cxi" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    r = run(
        app,
        ["reconstruct", str(theirs), "--out", str(out), "--epochs", "2", "--probe", str(probe_src)],
    )
    assert r.exit_code == 0, r.stderr
    rec = read_reconstruction(out)
    loaded = pio.load(theirs)
    assert rec.reconstructed_object.shape == loaded.frame_shape
    assert np.isfinite(rec.reconstructed_object).all()
    # the positions CDTools-style metres give back are ours up to a whole-pixel shift
    shift = loaded.xcoords - ds.xcoords
    assert np.ptp(shift) < 1e-5 and abs(shift[0] - round(shift[0])) < 1e-5  # CDTools: float32
