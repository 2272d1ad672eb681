"""One set of defaults: a study cell re-created by hand with the CLI's defaults gives the
study's numbers (phase synchronisation and stitching as the study does them)."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from ptychobench.study.design import load_design
from ptychobench.study.run import run_study

DESIGN = """\
name = "by-hand"
doses = [1e4]
device = "cpu"
num_threads = 1
arms = ["PtychoPINN", "Baseline"]
[views.dense]
gridsize = 2
neighbor_count = 5
[simulation]
N = 32
object_size = 80
[pinn]
epochs = 2
n_filters_scale = 0.25
[baseline]
epochs = 2
n_filters_scale = 0.25
"""
SCORES = ("ssim", "ms_ssim", "mae", "frc50", "nrmse")


def _scores(path):
    with open(path, newline="") as fh:
        return {
            (r["model"], r["metric"]): (r["amplitude"], r["phase"], r["value"])
            for r in csv.DictReader(fh)
            if r["metric"] in SCORES
        }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("byhand")
    (d / "d.toml").write_text(DESIGN)
    design = load_design(d / "d.toml")
    assert design.metrics.phase_sync == 20  # the study's default
    res = run_study(design, d / "run", design_text=DESIGN, progress=False)
    assert res.ok, res.failure_summary()
    return d / "run"


@pytest.mark.parametrize("split", ["test", "train"])
def test_a_study_cell_by_hand_with_the_cli_defaults_gives_the_studys_numbers(run, tmp_path, split):
    cell = "dose_10000/dense/" + split
    out = tmp_path / "cmp"
    p = subprocess.run(
        [
            sys.executable, "-m", "ptychobench.cli", "compare",
            str(run / "data/dose_10000/dense" / f"{split}.npz"), "--out-dir", str(out),
            "--pinn", str(run / "models/dose_10000/dense/pinn"),
            "--baseline", str(run / "models/dose_10000/dense/baseline"), "--device", "cpu",
        ],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    hand = _scores(out / "comparison_metrics.csv")
    study = _scores(run / "compare" / cell / "comparison_metrics.csv")
    assert {m for m, _ in hand} == {"PtychoPINN", "Baseline", "Flat"}
    assert hand == study


def test_the_ablation_is_one_flag_and_changes_the_networks(run, tmp_path):
    out = tmp_path / "off"
    p = subprocess.run(
        [
            sys.executable, "-m", "ptychobench.cli", "compare",
            str(run / "data/dose_10000/dense/test.npz"), "--out-dir", str(out),
            "--pinn", str(run / "models/dose_10000/dense/pinn"), "--phase-sync", "0",
            "--baseline", str(run / "models/dose_10000/dense/baseline"),
            "--device", "cpu",
        ],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    off = _scores(out / "comparison_metrics.csv")
    study = _scores(run / "compare/dose_10000/dense/test/comparison_metrics.csv")
    assert off[("PtychoPINN", "ssim")] != study[("PtychoPINN", "ssim")]
    assert off[("Baseline", "ssim")] != study[("Baseline", "ssim")]
