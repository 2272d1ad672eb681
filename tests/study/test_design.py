"""Study design: presets load, bad keys/values are named by their dotted path, paths resolve."""

import math

import pytest

from ptychobench.study.design import (
    PRESETS,
    DesignError,
    design_from_dict,
    dose_dir,
    load_design,
    load_preset,
)
from ptychobench.study.jobs import conditions, plan


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_use_a_textured_object(name):
    d = load_preset(name)
    assert d.doses == [1e3, 1e4, 1e5]
    assert set(d.views) == {"dense", "sparse"}
    assert d.views["dense"].gridsize == 2 and d.views["sparse"].gridsize == 1
    # the sparse view must actually be sparser
    assert d.views["sparse"].s_img < d.views["dense"].s_img
    assert d.simulation.object.startswith("image:")
    assert d.simulation.N == 64 and d.simulation.probe == "fly64"
    cfg = d.simulation_config(1e4)
    assert cfg.dose == 1e4 and cfg.overlap == 0.7


def test_fly64_is_the_full_study():
    q, f = load_preset("quick"), load_preset("fly64")
    fp, qp = f.arm("PtychoPINN").settings, q.arm("PtychoPINN").settings
    assert fp.epochs >= 50 and f.arm("PtyChi").settings.epochs == 100
    assert f.simulation.object_size > q.simulation.object_size
    assert fp.epochs > qp.epochs


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_stops_training_on_a_validation_plateau(name):
    d = load_preset(name)
    from ptychobench.arms import ArmContext

    for arm in (d.arm("PtychoPINN").settings, d.arm("Baseline").settings):
        assert arm.val_fraction > 0  # the plateau is measured on held-out groups
        assert 0 < arm.early_stopping_patience < arm.epochs
        assert arm.min_epochs < arm.epochs
        cfg = arm.train_config(ArmContext())
        assert (cfg.early_stopping_patience, cfg.min_epochs, cfg.min_delta) == (
            arm.early_stopping_patience,
            arm.min_epochs,
            arm.min_delta,
        )


@pytest.mark.parametrize("name", PRESETS)
def test_presets_stitch_the_sparse_view_probe_weighted_and_the_dense_view_flat(name):
    from ptychobench.study.jobs import job_settings

    d = load_preset(name)
    by_view = {
        j.view: job_settings(j, d)["stitch_weighting"] for j in plan(d) if j.kind == "compare"
    }
    assert by_view == {"dense": "flat", "sparse": "probe"}


@pytest.mark.parametrize("name", PRESETS)
def test_presets_phase_synchronise_network_patches_and_the_compare_key_says_so(name):
    from ptychobench.study.jobs import job_settings

    d = load_preset(name)
    assert d.metrics.phase_sync == 20
    off = d.model_copy(update={"metrics": d.metrics.model_copy(update={"phase_sync": 0})})
    for a, b in zip(plan(d), plan(off), strict=True):
        changed = job_settings(a, d) != job_settings(b, off)
        # only what stitches network patches re-runs: compare and the network arms'
        # reconstructions (the LSQML hybrid re-runs because its start, the PINN's, changed)
        stitched = a.arm in ("PtychoPINN", "Baseline", "PtychoPINN+TTR")
        assert changed == (a.kind == "compare" or (a.kind in ("recon", "halves") and stitched)), (
            a.id
        )


@pytest.mark.parametrize("name", ["quick", "laptop", "fly64"])  # solvers: test_solvers.py
def test_presets_run_every_arm_and_the_hybrids_on_the_test_split_only(name):
    d = load_preset(name)
    assert list(d.arms) == ["PtychoPINN", "Baseline", "PtyChi", "PtychoPINN+LSQML", "Ceiling"]
    # TTR is opt-in: it scored below the network it refines (README, "Test-time refinement")
    d = d.with_arm("PtychoPINN+TTR")
    jobs = plan(d)
    hybrid_arms = ("PtychoPINN+LSQML", "PtychoPINN+TTR")
    hybrids = [j for j in jobs if j.kind == "recon" and j.arm in hybrid_arms]
    assert len(hybrids) == 2 * len(d.doses) * len(d.views) * d.repeats
    assert {j.split for j in hybrids} == {"test"}
    by_id = {j.id: j for j in jobs}
    for j in hybrids:  # from the PINN: its reconstruction (LSQML) or its trained network (TTR)
        assert any(by_id[x].arm == "PtychoPINN" for x in j.deps)
        cmp_ = by_id[f"compare.{j.dd}.{j.view}.{j.split}"]
        assert j.id in cmp_.deps and j.id in cmp_.soft
    # the curve of pty-chi from flat is recorded on the test split, where the hybrid runs
    its = [j for j in jobs if j.kind == "recon" and j.arm == "PtyChi"]
    assert all(len(j.outputs) == (2 if j.split == "test" else 1) for j in its)


def test_a_design_without_the_hybrids_plans_what_it_did_before():
    d = load_preset("quick")
    doc = d.model_dump(mode="json")
    doc["arms"] = {a: doc["arms"][a] for a in ("PtychoPINN", "Baseline", "PtyChi")}
    plain = type(d).model_validate(doc)
    arms = {j.arm for j in plan(plain)}
    assert not arms & {"PtychoPINN+LSQML", "PtychoPINN+TTR"}
    assert all(len(j.outputs) == 1 for j in plan(plain) if j.kind == "recon")
    only_ptychi = d.model_copy(update={"arms": ["PtyChi"]})
    assert not {j.kind for j in plan(only_ptychi)} & {"train_pinn", "train_baseline"}


def test_laptop_is_the_cpu_science_preset():
    q, lap, f = load_preset("quick"), load_preset("laptop"), load_preset("fly64")
    assert lap.simulation.object == "image:camera+astronaut"
    # more training than test data, wider and longer-trained networks than quick
    assert lap.split.fraction > 0.5 > 0
    lp, qp = lap.arm("PtychoPINN").settings, q.arm("PtychoPINN").settings
    assert lp.n_filters_scale > qp.n_filters_scale
    assert lap.simulation.object_size > q.simulation.object_size
    assert lap.simulation.object_size < f.simulation.object_size
    assert lp.min_epochs > 0 and lp.min_delta > 0
    # the report states what each preset is for
    assert "smoke test" in q.description.lower()
    assert "laptop" in lap.description


def test_noise_seed_differs_per_dose_but_scan_does_not():
    d = load_preset("quick")
    seeds = [d.simulation_config(x).noise_seed for x in d.doses]
    assert len(set(seeds)) == 3
    assert {d.simulation_config(x).seed for x in d.doses} == {d.seeds.simulation}


@pytest.mark.parametrize(
    "doc, key",
    [
        ({"views": {"dense": {"gridsize": 3}}}, "views.dense.gridsize"),
        ({"pinn": {"epochz": 3}}, "pinn.epochz"),
        ({"pinn": {"epochs": 0}}, "pinn.epochs"),
        ({"simulation": {"N": 4}}, "simulation.N"),
        ({"split": {"fraction": 1.5}}, "split.fraction"),
        ({"iterative": {"engine": "magic"}}, "iterative.engine"),
        ({"doses": [1e3, -5]}, "doses"),
        ({"doses": []}, "doses"),
        ({"bogus": 1}, "bogus"),
        ({"views": {"dense": {"gridsize": 2, "neighbor_count": 3}}}, "views"),
        ({"pinn": {"min_epochs": -1}}, "pinn.min_epochs"),
        ({"baseline": {"min_delta": -0.1}}, "baseline.min_delta"),
        ({"pinn": {"merge_weighting": "gaussian"}}, "pinn.merge_weighting"),
        ({"metrics": {"stitch_weighting": "bogus"}}, "metrics.stitch_weighting"),
        (
            {"views": {"dense": {"gridsize": 2, "stitch_weighting": "x"}}},
            "views.dense.stitch_weighting",
        ),
        ({"description": 5}, "description"),
        ({"metrics": {"phase_sync": -1}}, "metrics.phase_sync"),
        ({"arms": ["PtychoPINN", "Magic"]}, "arms"),
        ({"arms": ["PtyChi", "PtychoPINN+LSQML"]}, "arms"),
        ({"arms": ["PtyChi", "PtyChi"]}, "arms"),
        ({"arms": []}, "arms"),
        ({"hybrid": {"lsqml_epochs": 0}}, "hybrid.lsqml_epochs"),
        ({"metrics": {"phase_sync": 2.5}}, "metrics.phase_sync"),
    ],
)
def test_bad_keys_and_values_name_the_dotted_path(doc, key):
    with pytest.raises(DesignError) as e:
        design_from_dict(doc, source="my.toml")
    msg = str(e.value)
    assert msg.startswith(f"my.toml: {key}")
    assert "\n" not in msg


def test_unknown_key_message_says_so():
    with pytest.raises(DesignError, match=r"pinn\.epochz: unknown key; found 3"):
        design_from_dict({"pinn": {"epochz": 3}})


def test_load_design_resolves_relative_paths(tmp_path):
    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "s.toml").write_text('[simulation]\nobject = "obj/o.npz"\nprobe = "fly64"\n')
    d = load_design(sub / "s.toml")
    assert d.simulation.object == str((sub / "obj" / "o.npz").resolve())
    assert d.simulation.probe == "fly64"


def test_load_design_errors(tmp_path):
    with pytest.raises(DesignError, match="not found"):
        load_design(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("doses = [1e3,\n")
    with pytest.raises(DesignError, match="not valid TOML"):
        load_design(bad)
    with pytest.raises(DesignError, match="preset: expected one of"):
        load_preset("huge")


def test_plan_shape_and_order():
    d = load_preset("quick")
    jobs = plan(d)
    kinds = [j.kind for j in jobs]
    n_d, n_v = len(d.doses), len(d.views)
    assert kinds.count("simulate") == n_d
    assert kinds.count("view") == n_d * n_v * 2
    fits = [j.arm for j in jobs if j.kind == "fit"]
    assert fits.count("PtychoPINN") == fits.count("Baseline") == n_d * n_v == len(fits) / 2
    recons = [j.arm for j in jobs if j.kind == "recon"]
    assert recons.count("PtyChi") == kinds.count("compare") == n_d * n_v * 2 == 12
    # the networks reconstruct both splits; the hybrids the test split only; Flat inline
    assert recons.count("PtychoPINN") == 12 and recons.count("PtychoPINN+LSQML") == 6
    assert recons.count("PtychoPINN+TTR") == 0  # opt-in
    assert "Flat" not in recons
    assert kinds[-3:] == ["aggregate", "report", "verify"]
    seen = set()
    for j in jobs:  # topological
        assert set(j.deps) <= seen, j.id
        seen.add(j.id)
    assert len(conditions(d)) == 12
    assert dose_dir(1e5) == "dose_100000"
    ids = {j.id for j in jobs}
    assert len(ids) == len(jobs)
    c = next(j for j in jobs if j.id == "compare.dose_1000.dense.test")
    arm_jobs = {
        f"{p}.dose_1000.dense.test"
        for p in ("pinn", "baseline", "iterative", "hybrid_lsqml", "ceiling")
    } | {
        f"halves_{p}.dose_1000.dense.test"
        for p in ("pinn", "baseline", "ptychi", "hybrid_lsqml")
    }
    assert set(c.deps) == {"view.dose_1000.dense.test"} | arm_jobs
    assert set(c.soft) == arm_jobs  # an arm's failure fails its cells, not the comparison
    assert c.outputs == ("compare/dose_1000/dense/test",)
    h = next(j for j in jobs if j.id == "halves_hybrid_lsqml.dose_1000.dense.test")
    # the hybrid's half-scans start from the PINN's half-scans, as its test run from the PINN's
    assert set(h.deps) == {"view.dose_1000.dense.test", "halves_pinn.dose_1000.dense.test"}
    t = next(j for j in plan(d.with_arm("PtychoPINN+TTR")) if j.id == "ttr.dose_1000.dense.test")
    assert set(t.deps) == {"view.dose_1000.dense.test", "train_pinn.dose_1000.dense"}
    assert kinds.count("halves") == n_d * n_v * 4  # the test split only, per method arm
    s = next(j for j in jobs if j.id == "split.dose_1000")
    assert s.outputs[2] == "data/dose_1000/heldout.npz"
    assert math.isclose(c.dose, 1000.0)
