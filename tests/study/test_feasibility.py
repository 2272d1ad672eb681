"""The plan check: infeasible designs are refused in one line before anything is written, adaptable
ones are capped with one warning, and failures read in a few short lines."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest
from typer.testing import CliRunner

from ptychobench.cli import app
from ptychobench.data.grouping import make_view
from ptychobench.data.split import split
from ptychobench.evaluate.reference_free import heldout_count
from ptychobench.simulate import simulate
from ptychobench.study.design import DesignError, design_from_dict
from ptychobench.study.feasibility import check_design

SMALL = """\
name = "small"
arms = ["PtychoPINN", "Baseline", "PtyChi"]
doses = [1e3]
device = "cpu"
num_threads = 1

[views.dense]
gridsize = 2
neighbor_count = 5
n_groups = 500

[views.sparse]
gridsize = 1
s_img = 0.5

[simulation]
N = 32
object_size = 80

[pinn]
epochs = 1
n_filters_scale = 0.25

[baseline]
epochs = 1
n_filters_scale = 0.25
loss = "mae"

[iterative]
epochs = 2

[metrics]
phase_sync = 0  # the value these tests were written at (the default is 20)
"""


def _design(text: str = SMALL):
    return design_from_dict(tomllib.loads(text), source="small")


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_plan_counts_are_what_the_jobs_make():
    design = _design()
    f = check_design(design)
    ds = simulate(design.simulation_config(1e3))
    train, test = split(ds, axis=design.split.axis, fraction=design.split.fraction)
    n_test = test.n - heldout_count(test.n, design.split.heldout_fraction)
    assert f.positions == [ds.n] and f.halves == [{"train": train.n, "test": n_test}]
    for v in f.views:
        spec = design.views[v.view]
        n = train.n if v.split == "train" else n_test
        groups, _ = spec.groups_for(v.positions)
        made = make_view(
            test.select(np.arange(n)) if v.split == "test" else train,
            spec.gridsize,
            s_img=spec.s_img,
            n_groups=groups,
            neighbor_count=spec.neighbor_count,
        )
        assert (made.n, len(made.groups)) == (v.positions, v.groups)
    dense = [v for v in f.views if v.view == "dense"]
    assert all(v.capped and v.groups == v.positions < 500 for v in dense)
    (warning,) = f.warnings
    assert warning.startswith("views.dense.n_groups = 500 > the ") and "capped" in warning


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    run = tmp_path / "run"
    res = _cli("study", "run", str(cfg), "--out", str(run), "--dry-run")
    assert res.exit_code == 0, res.output
    out = res.output.splitlines()
    assert out[0].startswith("plan: small: 1 dose(s) × 1 repeat(s) × 2 view(s);")
    assert any(line.startswith("view dense: train ") and "capped" in line for line in out)
    assert any(line.startswith("warning: views.dense.n_groups = 500") for line in out)
    assert "simulate.dose_1000" in res.output and out[-1].startswith("dry run: nothing written")
    assert max(len(line) for line in out) <= 300
    assert not run.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["small.toml"]


@pytest.mark.parametrize(
    "edit, needle",
    [
        # 80 px object, N = 32: s_img 0.02 leaves 2 or 3 positions per split
        (("gridsize = 2\nneighbor_count = 5", "gridsize = 2\nneighbor_count = 5\ns_img = 0.02"),
         "views.dense: gridsize 2 needs at least 5 positions per split"),
        (("object_size = 80", "object_size = 80\nprobe = \"{probe}\""), "simulation.probe:"),
        (("object_size = 80", "object_size = 20"), "simulation"),
    ],
)
def test_infeasible_designs_are_refused_in_one_line_before_any_file(tmp_path, edit, needle):
    probe = tmp_path / "probe64.npz"
    np.savez(probe, probeGuess=np.ones((64, 64), np.complex64))
    text = SMALL.replace(edit[0], edit[1].format(probe=probe))
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(DesignError, match=needle.split(":")[0]):
        check_design(_design(text))
    run = tmp_path / "run"
    res = _cli("study", "run", str(cfg), "--out", str(run))
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert len(lines[0]) <= 300
    assert not run.exists()


BROKEN = """
import sys
from ptychobench.study import jobs

run_view = jobs.BODIES["view"]

def broken(job, design, run_dir, stage, progress):
    if job.id == "view.dose_1000.sparse.test":
        raise ValueError("n_groups: expected fewer " + "x" * 5000)
    run_view(job, design, run_dir, stage, progress)

jobs.BODIES["view"] = broken
from ptychobench.cli import main
sys.argv = ["ptychobench", "study", "run", sys.argv[1], "--out", sys.argv[2], "--no-progress",
            "--only", "view=sparse"]
main()
"""


def test_a_broken_job_reads_in_at_most_five_short_lines(tmp_path):
    """One job raises with a 5,000-character message: the console says how many failed and
    were blocked, the first cause in one line, its log and where the full list is."""
    import subprocess
    import sys

    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL.replace("n_groups = 500\n", ""))
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-c", BROKEN, str(cfg), str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1, res.stderr[-2000:]
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert 1 <= len(lines) <= 5 and max(len(line) for line in lines) <= 300, lines
    errors = [line for line in lines if line.startswith("error: ")]
    # the sparse test view; the three arms' reconstructions and half-scans of it and its
    # comparison blocked (3 + 3 + 1), the rest ran
    assert errors[0].startswith("error: 1 job(s) failed, 7 blocked; ")
    assert "blocked; first: view.dose_1000.sparse.test: ValueError: n_groups" in errors[0]
    assert any(line.startswith("error: its log: ") and "logs/view." in line for line in errors)
    assert errors[-1].startswith("error: every job's status and error: ")
    assert "manifest.json" in errors[-1]
