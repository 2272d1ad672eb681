"""X-ray geometry: wavelength, object pixel λz/(N·p), and its journey through the data files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ptychobench.data.grouping import make_view
from ptychobench.data.io import load, save
from ptychobench.data.split import split
from ptychobench.inspect import summarize
from ptychobench.physics.geometry import (
    Geometry,
    energy_ev_from_wavelength,
    format_length,
    geometry_of,
    wavelength_m,
)
from ptychobench.simulate import SimulationConfig, simulate


def test_wavelength_matches_the_textbook_rule():
    # λ [nm] = 1.239841984 / E [keV]
    assert wavelength_m(8800.0) == pytest.approx(1.239841984e-9 / 8.8, rel=1e-9)
    assert energy_ev_from_wavelength(wavelength_m(12345.0)) == pytest.approx(12345.0, rel=1e-12)
    with pytest.raises(ValueError, match="eV"):
        wavelength_m(0.0)


def test_object_pixel_is_lambda_z_over_N_p():
    g = Geometry(10000.0, 1.5, 55e-6, 110e-6, 128)
    lam = wavelength_m(10000.0)
    assert g.object_pixel_x_m == pytest.approx(lam * 1.5 / (128 * 55e-6), rel=1e-12)
    assert g.object_pixel_y_m == pytest.approx(g.object_pixel_x_m / 2, rel=1e-12)
    with pytest.raises(ValueError, match="square object pixels"):
        _ = g.object_pixel_m
    # the default: 8.8 keV, 2 m, 75 µm → 58.7 nm at N = 64; halving N doubles the pixel
    d64, d32 = Geometry.default(64), Geometry.default(32)
    assert d64.object_pixel_m == pytest.approx(58.70e-9, abs=0.01e-9)
    assert d32.object_pixel_m == pytest.approx(2 * d64.object_pixel_m, rel=1e-12)
    with pytest.raises(ValueError, match="detector_distance_m"):
        Geometry(8800.0, -1.0, 75e-6, 75e-6, 64)


def test_metadata_round_trip_recomputes_derived_lengths():
    g = Geometry(7000.0, 3.0, 75e-6, 75e-6, 64)
    record = g.to_metadata()
    assert Geometry.from_metadata(record) == g
    record["object_pixel_x_m"] = 1.0  # a stale derived value is not trusted
    assert Geometry.from_metadata(record).object_pixel_x_m == pytest.approx(g.object_pixel_x_m)
    assert geometry_of({}) is None
    with pytest.raises(ValueError, match="energy_eV"):
        Geometry.from_metadata({"N": 64})


def test_format_length_picks_a_readable_unit():
    assert format_length(58.7e-9) == "58.7 nm"
    assert format_length(1.234e-6) == "1.23 µm"
    assert format_length(4.5e-4) == "450 µm"


def test_simulation_records_geometry_and_split_view_and_files_carry_it(tmp_path):
    cfg = SimulationConfig(
        N=32, object="grf", object_size=96, step_px=8, energy_ev=6200.0, detector_distance_m=1.0
    )
    ds = simulate(cfg)
    g = geometry_of(ds.metadata, ds.N)
    assert g == Geometry(6200.0, 1.0, 75e-6, 75e-6, 32)
    train, test = split(ds)
    v = make_view(test, gridsize=1)
    for part in (train, test, v):
        assert geometry_of(part.metadata, part.N) == g
    for ext in (".npz", ".cxi"):
        save(v, tmp_path / f"v{ext}")
        assert geometry_of(load(tmp_path / f"v{ext}").metadata, 32) == g


def test_inspect_gives_lengths_in_physical_units_or_says_pixels_only():
    ds = simulate(N=32, object="grf", object_size=96, step_px=8)
    s = summarize(ds)
    px = Geometry.default(32).object_pixel_m
    assert s["object_pixel_nm"] == pytest.approx(px * 1e9)
    assert s["scan_step_px"] == pytest.approx(8.0)
    assert s["scan_step_um"] == pytest.approx(8.0 * px * 1e6)
    assert s["probe_effective_diameter_um"] == pytest.approx(
        s["probe_effective_diameter_px"] * px * 1e6
    )
    ds.metadata.pop("geometry")
    s = summarize(ds)
    assert "pixels only" in s["lengths"] and "object_pixel_nm" not in s
    assert math.isfinite(s["probe_effective_diameter_px"])
    assert np.isfinite(s["scan_step_px"])
