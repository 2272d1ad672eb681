"""Experimental mode: a [data] scan instead of a simulation, scored without ground truth."""

from __future__ import annotations

import csv
import re
import tomllib

import numpy as np
import pytest
from typer.testing import CliRunner

from ptychobench.cli import app
from ptychobench.simulate import SimulationConfig, simulate
from ptychobench.study.design import DesignError, design_from_dict
from ptychobench.study.run import run_study

DESIGN = """\
name = "measured"
arms = ["PtychoPINN", "PtyChi", "PtychoPINN+LSQML", "PtychoPINN+TTR"]
device = "cpu"
num_threads = 1

[views.dense]
gridsize = 2
neighbor_count = 5
n_groups = 40

[data]
file = "{file}"

[pinn]
epochs = 1
n_filters_scale = 0.25

[iterative]
epochs = 4

[hybrid]
lsqml_epochs = 2
snapshot_every = 1
ttr_epochs = 1

[metrics]
phase_sync = 0  # the value these tests were written at (the default is 20)
"""
FREE = ("heldout_nll_rel", "halfscan_frc_halfbit", "halfscan_frc1over7")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("measured")
    ds = simulate(SimulationConfig(N=32, object="grf", object_size=128, dose=3e4, seed=2))
    arrays = {
        "diffraction": ds.diffraction,
        "probeGuess": ds.probeGuess,
        "xcoords": ds.xcoords,
        "ycoords": ds.ycoords,
    }
    np.savez(d / "measured.npz", **arrays)  # reference-format keys, no truth
    np.savez(d / "truth.npz", **arrays, objectGuess=ds.objectGuess, Y=ds.Y)
    return d


def _design(files, name):
    text = DESIGN.format(file=files / name)
    return design_from_dict(tomllib.loads(text), source="measured"), text


def _free(run):
    out = {}
    for split in ("test",):
        for view in ("dense",):
            (p,) = (run / "compare").glob(f"dose_*/{view}/{split}/comparison_metrics.csv")
            with p.open() as fh:
                for r in csv.DictReader(fh):
                    if r["metric"] in FREE:
                        out[(view, r["model"], r["metric"])] = (r["amplitude"], r["phase"],
                                                                r["value"])
    return out


@pytest.fixture(scope="module")
def runs(files):
    out = {}
    for name in ("measured.npz", "truth.npz"):
        design, text = _design(files, name)
        run = files / f"run_{name.split('.')[0]}"
        res = run_study(design, run, design_text=text, progress=False)
        out[name] = (design, run, res)
    return out


def test_the_dose_is_the_datas_own(files):
    design, _ = _design(files, "measured.npz")
    with np.load(files / "measured.npz") as f:
        photons = float(np.square(f["diffraction"].astype(np.float64)).sum(axis=(1, 2)).mean())
    assert design.experimental and design.doses == [float(round(photons))]


def test_a_scan_without_truth_runs_every_arm_and_scores_them_reference_free(runs):
    _, run, res = runs["measured.npz"]
    assert res.ok, res.failure_summary()
    free = _free(run)
    for view in ("dense",):
        for arm in ("PtychoPINN", "PtyChi", "PtychoPINN+LSQML", "PtychoPINN+TTR"):
            nll = free[(view, arm, "heldout_nll_rel")][2]
            assert float(nll) > 0, (view, arm)
            assert float(free[(view, arm, "halfscan_frc_halfbit")][1]) > 0
    assert not any(m == "Flat" for _, m, _ in free)  # no floor without truth
    html = (run / "analysis" / "report.html").read_text()
    assert 'data-metric="heldout_nll_rel"' in html and 'data-metric="halfscan_frc_halfbit"' in html
    assert "held-out NLL (rel.)" in html
    assert (run / "analysis" / "verification_report.json").is_file()


def test_the_same_scan_with_truth_gives_the_same_reference_free_numbers(runs):
    _, run_m, _ = runs["measured.npz"]
    _, run_t, res = runs["truth.npz"]
    assert res.ok, res.failure_summary()
    assert _free(run_m) == {k: v for k, v in _free(run_t).items() if k[1] != "Flat"}
    (csv_t,) = (run_t / "compare").glob("dose_*/dense/test/comparison_metrics.csv")
    with csv_t.open() as fh:
        ssim = [r for r in csv.DictReader(fh) if r["metric"] == "ssim" and r["model"] == "PtyChi"]
    assert float(ssim[0]["phase"]) > 0  # and the ground-truth scores beside them


def _bad_files(d):
    ds = simulate(SimulationConfig(N=32, object="grf", object_size=96, dose=1e4, seed=2))
    base = {"diffraction": ds.diffraction, "probeGuess": ds.probeGuess, "xcoords": ds.xcoords,
            "ycoords": ds.ycoords, "objectGuess": ds.objectGuess}
    cases = {
        "no_diffraction.npz": ({k: v for k, v in base.items() if k != "diffraction"},
                               "diffraction"),
        "probe_size.npz": (base | {"probeGuess": np.ones((48, 48), np.complex64)}, "probeGuess"),
        "outside.npz": (base | {"xcoords": ds.xcoords + 500.0}, "xcoords"),
    }
    for name, (arrays, _) in cases.items():
        np.savez(d / name, **arrays)
    return {name: needle for name, (_, needle) in cases.items()}


def test_bad_scan_files_are_refused_in_one_line_exit_2_nothing_written(tmp_path):
    for name, needle in _bad_files(tmp_path).items():
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(DESIGN.format(file=name))
        run = tmp_path / f"run_{name}"
        res = CliRunner().invoke(app, ["study", "run", str(cfg), "--out", str(run)])
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2, (name, res.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and "data.file" in lines[0]
        assert needle in lines[0] and len(lines[0]) <= 300, lines[0]
        assert not run.exists()


@pytest.mark.parametrize(
    "change, needle",
    [
        (
            'arms = ["PtychoPINN", "Baseline", "PtyChi"]',
            "arms.Baseline: it trains on ground-truth patches",
        ),
        ("doses = [1e3]", "a [data] study has one dose, the data's own"),
        ("[simulation]\nN = 32", "give [data] (a scan file) or [simulation], not both"),
    ],
)
def test_designs_a_scan_cannot_serve_are_refused(files, change, needle):
    from ptychobench.study.feasibility import check_design

    text = DESIGN.format(file=files / "measured.npz")
    if change.startswith("arms"):
        text = text.replace(text.splitlines()[1], change)
    else:
        text = change + "\n" + text if change.startswith("doses") else text + "\n" + change
    with pytest.raises(DesignError, match=re.escape(needle)):
        check_design(design_from_dict(tomllib.loads(text), source="measured"))


def test_probe_less_scan_needs_data_probe_and_takes_it(files, tmp_path):
    """A scan file without a probe (a CXI from another tool) is refused in one line naming
    data.probe; with data.probe (any probe file, relative to the design) the design loads."""
    with np.load(files / "measured.npz") as f:
        arrays = {k: f[k] for k in f.files}
    probe = arrays.pop("probeGuess")
    np.savez(tmp_path / "noprobe.npz", **arrays)
    np.savez(tmp_path / "probe.npz", probeGuess=probe)
    text = DESIGN.format(file="noprobe.npz")
    with pytest.raises(DesignError, match=r"data\.probe") as err:
        design_from_dict(tomllib.loads(text), source="measured", base_dir=tmp_path)
    assert "\n" not in str(err.value) and "noprobe.npz" in str(err.value)
    with_probe = text.replace('file = "noprobe.npz"', 'file = "noprobe.npz"\nprobe = "probe.npz"')
    doc = tomllib.loads(with_probe)
    design = design_from_dict(doc, source="measured", base_dir=tmp_path)
    assert design.data.probe == str(tmp_path / "probe.npz")
    np.testing.assert_array_equal(design.data.load().probeGuess, probe)


def test_the_ceiling_is_absent_in_experimental_mode(files):
    from ptychobench.study.jobs import plan, planned_arms

    design, _ = _design(files, "truth.npz")
    with_ceiling = design.with_arm("Ceiling")
    assert "Ceiling" in with_ceiling.arm_objects()
    # a scan file's "truth" is no simulation's: the ceiling needs a known object, the floor
    # (inline in compare) only where the file has one
    assert "Ceiling" not in planned_arms(with_ceiling) and "Flat" in planned_arms(with_ceiling)
    assert not any(j.arm == "Ceiling" for j in plan(with_ceiling))
