"""The arm interface and registry: built-ins resolve with their roles and settings, the legacy
sections map onto them, the floor equals compare's, the ceiling bounds the solver from flat, a
context key holds only what an arm reads, and the references never win a verdict."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ptychobench.arms import ArmContext, ArmError, legacy_tables, resolve, resolve_all
from ptychobench.arms.builtin import CeilingArm, FlatArm, PtyChiArm
from ptychobench.evaluate.compare import CompareSettings, compare
from ptychobench.simulate import SimulationConfig, simulate
from ptychobench.study.aggregate import Lineup, verdicts


@pytest.fixture(scope="module")
def tiny():
    return simulate(SimulationConfig(N=32, object_size=80, dose=1e4, seed=3))


def test_builtins_resolve_with_roles_and_defaults():
    arms = resolve_all({n: {} for n in ("PtychoPINN", "PtyChi", "PtychoPINN+LSQML", "Ceiling")})
    assert arms["PtychoPINN+LSQML"].start == "PtychoPINN"
    assert isinstance(arms["PtychoPINN+LSQML"], PtyChiArm) and arms["PtychoPINN+LSQML"].test_only
    assert not arms["PtyChi"].test_only and arms["PtyChi"].start is None
    assert arms["Ceiling"].role == "ceiling" and arms["Ceiling"].needs.truth_object
    assert resolve("Flat").role == "floor" and resolve("Flat").inline
    # the spec's layout is kept for the built-ins; a new instance gets its own directories
    recon = arms["PtyChi"].recon_dir("dose_1000", "dense", "test")
    assert recon == "iterative/dose_1000/dense/test"
    assert arms["PtychoPINN"].artifact_dir("dose_1000", "dense") == "models/dose_1000/dense/pinn"
    epie = resolve("PtyChi-ePIE", {"type": "PtyChi", "engine": "epie", "epochs": 7})
    assert epie.settings.engine == "epie" and epie.slug == "ptychi_epie"
    assert epie.recon_dir("d", "v", "s") == "arms/ptychi_epie/d/v/s"


def test_arms_with_one_directory_are_refused():
    with pytest.raises(ArmError, match="directory name 'my_arm'"):
        resolve_all({"My-Arm": {"type": "PtyChi"}, "My_Arm": {"type": "PtyChi"}})


def test_legacy_sections_map_onto_the_builtins_and_say_where_a_key_came_from():
    tables, origin = legacy_tables(
        {
            "iterative": {"engine": "epie", "epochs": 9},
            "hybrid": {"lsqml_epochs": 4, "ttr_lr": 2e-4},
        }
    )
    assert tables["PtyChi"] == {"engine": "epie", "epochs": 9}
    assert tables["PtychoPINN+LSQML"] == {"engine": "epie", "epochs": 4}
    assert tables["PtychoPINN+TTR"] == {"lr": 2e-4}
    assert origin[("PtychoPINN+LSQML", "epochs")] == "hybrid.lsqml_epochs"
    assert origin[("PtychoPINN+TTR", "lr")] == "hybrid.ttr_lr"
    with pytest.raises(ArmError, match="hybrid.bogus: unknown key"):
        legacy_tables({"hybrid": {"bogus": 1}})


def test_context_key_holds_only_what_the_arm_reads():
    ctx = ArmContext(seed=1, solver_seed=2, phase_sync=20, crop_size_M=16)
    other = dataclasses.replace(ctx, phase_sync=0, crop_size_M=8, seed=5)
    solver, net = resolve("PtyChi"), resolve("PtychoPINN")
    assert solver.context_key(ctx, "reconstruct") == solver.context_key(other, "reconstruct")
    assert net.context_key(ctx, "reconstruct") != net.context_key(other, "reconstruct")
    # stitching is no part of training
    same_seed = dataclasses.replace(other, seed=1)
    assert net.context_key(ctx, "fit") == net.context_key(same_seed, "fit")


def test_flat_is_compares_floor(tiny):
    rec = FlatArm("Flat").reconstruct(tiny, ArmContext())
    expect = np.abs(tiny.objectGuess).mean()
    assert rec.reconstructed_object.shape == tiny.objectGuess.shape
    np.testing.assert_allclose(rec.reconstructed_object, np.complex64(expect))
    with pytest.raises(ValueError, match="needs the true object"):
        FlatArm("Flat").reconstruct(dataclasses.replace(tiny, objectGuess=None), ArmContext())


def test_the_ceiling_bounds_the_solver_from_flat_and_never_wins(tiny, tmp_path):
    ctx = ArmContext(device="cpu")
    flat_start = PtyChiArm("PtyChi", PtyChiArm.Settings(epochs=20)).reconstruct(tiny, ctx)
    ceiling = CeilingArm("Ceiling", CeilingArm.Settings(epochs=20)).reconstruct(tiny, ctx)
    assert ceiling.metadata["init_from_truth"] is True
    res = compare(tiny, {"PtyChi": flat_start, "Ceiling": ceiling}, tmp_path,
                  CompareSettings(floor=True))
    ph = {a: res.metrics[a]["ssim"][1] for a in ("PtyChi", "Ceiling", "Flat")}
    assert ph["Flat"] < ph["PtyChi"] < ph["Ceiling"], ph
    rows = [
        {"dose": 1e4, "view": "v", "split": "test", "repeat": 0, "model": a, "metric": "ssim",
         "amplitude": res.metrics[a]["ssim"][0], "phase": ph[a], "value": None}
        for a in ph
    ]
    v = next(x for x in verdicts(rows, lineup=Lineup()) if x["part"] == "phase")
    assert v["leader"] == "PtyChi" and set(v["means"]) == {"PtyChi"}
    assert v["floor"] == ph["Flat"] and v["ceiling"] == ph["Ceiling"]
