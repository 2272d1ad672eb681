"""Withheld test patterns never reach an arm: poisoned, every reconstruction stays the same."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from ptychobench.data.io import load
from ptychobench.data.split import split
from ptychobench.evaluate.reference_free import heldout_indices
from ptychobench.study import jobs as study_jobs
from ptychobench.study.design import design_from_dict
from ptychobench.study.run import run_study

DESIGN = """\
name = "heldout"
arms = ["PtychoPINN", "Baseline", "PtyChi", "PtychoPINN+LSQML", "PtychoPINN+TTR"]
doses = [1e4]
device = "cpu"
num_threads = 1

[views.dense]
gridsize = 2
neighbor_count = 5
n_groups = 40

[split]
heldout_fraction = 0.2

[simulation]
N = 32
object_size = 96

[pinn]
epochs = 1
n_filters_scale = 0.25

[baseline]
epochs = 1
n_filters_scale = 0.25
loss = "mae"

[iterative]
epochs = 3

[hybrid]
lsqml_epochs = 2
snapshot_every = 1
ttr_epochs = 1

[metrics]
phase_sync = 0  # the value these tests were written at (the default is 20)
"""


def _design():
    return design_from_dict(tomllib.loads(DESIGN), source="heldout")


def _poison_simulate(original):
    """The simulation, with the patterns that will be withheld replaced by 10⁸ photons each: an
    arm that saw one would reconstruct something else."""

    def run(job, design, run_dir, stage, progress):
        original(job, design, run_dir, stage, progress)
        path = stage / job.outputs[0]
        full = load(path)
        _, test = split(full, axis=design.split.axis, fraction=design.split.fraction)
        held = heldout_indices(
            test.n, design.split.heldout_fraction, study_jobs._heldout_seed(design, job)
        )
        coord = full.ycoords if design.split.axis == "y" else full.xcoords
        in_test = np.flatnonzero(coord >= np.sort(coord)[-test.n])
        full.diffraction[in_test[held]] = 1e4
        path.unlink()
        study_jobs._save(full, path)

    return run


def _poison_heldout(original):
    """After the split, the withheld file itself becomes NaN (written around the validation)."""

    def run(job, design, run_dir, stage, progress):
        original(job, design, run_dir, stage, progress)
        path = stage / job.outputs[2]
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        arrays["diffraction"] = np.full_like(arrays["diffraction"], np.nan)
        path.unlink()
        np.savez(path, **arrays)

    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    clean = root / "clean"
    assert run_study(_design(), clean, design_text=DESIGN, progress=False).ok
    mp = pytest.MonkeyPatch()
    try:
        mp.setitem(study_jobs.BODIES, "simulate", _poison_simulate(study_jobs._run_simulate))
        mp.setitem(study_jobs.BODIES, "split", _poison_heldout(study_jobs._run_split))
        poisoned = root / "poisoned"
        res = run_study(_design(), poisoned, design_text=DESIGN, progress=False)
    finally:
        mp.undo()
    return clean, poisoned, res


def _arrays(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k != "meta"}


def test_poisoned_heldout_patterns_change_no_reconstruction(runs):
    clean, poisoned, res = runs
    assert not res.failed, res.errors
    held_clean = load(clean / "data/dose_10000/heldout.npz")
    assert held_clean.n >= 2 and np.isfinite(held_clean.diffraction).all()
    full = load(poisoned / "data/dose_10000/full.npz")  # the poison sits where the held-out are
    hit = (full.diffraction == 1e4).all(axis=(1, 2))
    np.testing.assert_array_equal(full.coords[hit], held_clean.coords)
    compared = set()
    for rel in sorted(p.relative_to(clean) for p in clean.rglob("*.npz")):
        if rel.parts[0] == "data":  # the simulation itself was poisoned, on purpose
            continue
        a, b = _arrays(clean / rel), _arrays(poisoned / rel)
        assert a.keys() == b.keys(), rel
        for k in a:
            if a[k].dtype.kind == "U" or k == "seconds":  # wall-clock times differ
                continue
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{rel}:{k}")
        compared.add(rel.as_posix())
    # pty-chi per split, both hybrids, the half-scans and the comparisons' reconstructions
    assert {
        "iterative/dose_10000/dense/train/recon.npz",
        "iterative/dose_10000/dense/test/recon.npz",
        "arms/hybrid_lsqml/dose_10000/dense/test/recon.npz",
        "arms/ttr/dose_10000/dense/test/recon.npz",
        "arms/pinn/dose_10000/dense/test/recon.npz",
        "halves/dose_10000/dense/test/pinn.npz",
        "halves/dose_10000/dense/test/ptychi.npz",
        "compare/dose_10000/dense/test/reconstructions.npz",
    } <= compared, sorted(compared)


def test_the_heldout_positions_are_in_no_arms_data(runs):
    clean, _, _ = runs
    held = load(clean / "data/dose_10000/heldout.npz").coords
    for p in (clean / "data/dose_10000").rglob("*.npz"):
        if p.name in ("heldout.npz", "full.npz"):
            continue
        c = load(p).coords
        assert not (c[:, None, :] == held[None, :, :]).all(-1).any(), p


def test_heldout_nll_is_scored_on_clean_data_and_skipped_on_poisoned(runs):
    import csv

    clean, poisoned, _ = runs

    def nll(run):
        with (run / "compare/dose_10000/dense/test/comparison_metrics.csv").open() as fh:
            return {r["model"]: r["value"] for r in csv.DictReader(fh)
                    if r["metric"] == "heldout_nll_rel"}

    good = nll(clean)
    assert all(float(good[a]) > 0 for a in ("PtychoPINN", "Baseline", "PtyChi"))
    assert good["Flat"] == "" and set(nll(poisoned).values()) == {""}


def test_heldout_fraction_zero_withholds_nothing(tmp_path):
    from ptychobench.study.feasibility import check_design

    text = DESIGN.replace("heldout_fraction = 0.2", "heldout_fraction = 0.0")
    design = design_from_dict(tomllib.loads(text), source="heldout")
    (spl,) = [j for j in study_jobs.plan(design) if j.kind == "split"]
    assert spl.outputs == ("data/dose_10000/train.npz", "data/dose_10000/test.npz")
    run = tmp_path / "run"
    res = run_study(design, run, design_text=text, only={"view": "dense", "split": "train"},
                    progress=False)
    assert res.ok, res.failure_summary()
    full, test = load(run / "data/dose_10000/full.npz"), load(run / "data/dose_10000/test.npz")
    _, whole = split(full, axis=design.split.axis, fraction=design.split.fraction)
    assert test.n == whole.n == check_design(design).halves[0]["test"]
    assert not (run / "data/dose_10000/heldout.npz").exists()
