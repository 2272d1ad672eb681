"""Interchange through the command line: products as arms and sources, refusals in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ptychobench.cli import app
from ptychobench.data.io import load
from ptychobench.data.product import read_product
from ptychobench.data.recon import read_reconstruction

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(r) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def simulate(path: Path, *extra) -> Path:
    r = invoke(
        "simulate", "--out", path, "--n", "32", "--object", "grf", "--object-size", "96",
        "--step-px", "8", "--dose", "1e4", *extra,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return simulate(tmp_path_factory.mktemp("d") / "d.npz")


def test_truth_product_is_a_perfect_arm_and_converts_back(data, tmp_path):
    prod = tmp_path / "truth.h5"
    r = invoke("convert", data, prod)
    assert r.exit_code == 0, r.stderr
    p = read_product(prod)
    ds = load(data)
    assert p.n == ds.n and p.energy_eV == pytest.approx(8800.0)
    r = invoke("compare", data, "--out-dir", tmp_path / "cmp", "--arm", f"Truth={prod}")
    assert r.exit_code == 0, r.stderr
    m = json.loads((tmp_path / "cmp" / "metrics.json").read_text())["models"]["Truth"]
    assert m["ssim"]["phase"] > 0.999 and m["nrmse"] < 1e-5
    # the printed FRC cut-off carries its period in nm (object pixel 117.4 nm at N = 32)
    assert "cycles/px (235 nm)" in r.stdout
    back = tmp_path / "back.npz"
    assert invoke("convert", prod, back, "--data", data).exit_code == 0
    rec = read_reconstruction(back, ds.frame_shape)
    np.testing.assert_allclose(rec.reconstructed_object, ds.objectGuess, atol=1e-6)


def test_product_with_another_pixel_size_is_refused_in_one_line(data, tmp_path):
    other = simulate(tmp_path / "other.npz", "--seed", "3")
    prod = tmp_path / "other.h5"
    ds = load(other)
    ds.metadata["geometry"]["energy_eV"] = 6000.0  # a different object pixel
    from ptychobench.data.io import save

    save(ds, other)
    assert invoke("convert", other, prod).exit_code == 0
    out = tmp_path / "cmp"
    line = one_error_line(invoke("compare", data, "--out-dir", out, "--arm", f"X={prod}"))
    assert "pixel" in line and "other.h5" in line
    assert "1.174e-07" in line or "117.4" in line or "1.17409" in line, line
    assert not out.exists() or list(out.iterdir()) == []


def test_product_is_a_probe_and_object_source_of_simulate(data, tmp_path):
    prod = tmp_path / "truth.h5"
    assert invoke("convert", data, prod).exit_code == 0
    new = simulate(tmp_path / "s.npz", "--probe", prod, "--object", prod)
    a, b = load(data), load(new)
    p = read_product(prod)
    np.testing.assert_array_equal(b.probeGuess, p.probe)
    np.testing.assert_array_equal(b.objectGuess, a.objectGuess)


def test_reconstruction_to_product_needs_the_data(data, tmp_path):
    rec = tmp_path / "r.npz"
    prod = tmp_path / "t.h5"
    assert invoke("convert", data, prod).exit_code == 0
    assert invoke("convert", prod, rec, "--data", data).exit_code == 0
    line = one_error_line(invoke("convert", rec, tmp_path / "r.h5"))
    assert "--data" in line and "r.npz" in line
    assert not (tmp_path / "r.h5").exists()
    r = invoke("convert", rec, tmp_path / "r.h5", "--data", data)
    assert r.exit_code == 0, r.stderr
    assert read_product(tmp_path / "r.h5").n == load(data).n


def test_probe_less_data_split_and_view_but_say_overlap_needs_the_probe(data, tmp_path):
    ds = load(data)
    np.savez(
        tmp_path / "noprobe.npz",
        diffraction=ds.diffraction,
        xcoords=ds.xcoords,
        ycoords=ds.ycoords,
    )
    r = invoke("split", tmp_path / "noprobe.npz", "--out-dir", tmp_path / "s")
    assert r.exit_code == 0, r.stderr
    test = tmp_path / "s" / "noprobe_test.npz"
    r = invoke("view", test, "--out", tmp_path / "v.npz", "--gridsize", "2")
    assert r.exit_code == 0, r.stderr
    report = json.loads((tmp_path / "v.npz.overlap.json").read_text())
    assert "no probe" in report["overlap"] and report["n_positions"] == load(test).n
    assert load(tmp_path / "v.npz").probeGuess is None
    # convert carries the missing probe through CXI and back
    assert invoke("convert", tmp_path / "v.npz", tmp_path / "v.cxi").exit_code == 0
    back = load(tmp_path / "v.cxi")
    assert back.probeGuess is None and back.n == load(test).n
