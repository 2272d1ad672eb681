"""The example arm: better than the flat floor, deterministic, truth-free, found by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from ptychobench_arm_example import BackprojectionArm

from ptychobench.arms import ArmContext, ArmError, resolve
from ptychobench.data.recon import write_reconstruction
from ptychobench.evaluate import CompareSettings, compare
from ptychobench.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def ds():
    # 80×80 object, 32-px patterns, 256 raster positions at sub-pixel coordinates
    return simulate(SimulationConfig(N=32, object_size=80, dose=1e5))


@pytest.fixture(scope="module")
def rec(ds):
    return resolve("Backprojection").reconstruct(ds, ArmContext())


def test_contract(ds, rec, tmp_path):
    rec.validate("Backprojection", shape=ds.frame_shape)
    assert rec.reconstructed_object.dtype == np.complex64
    assert rec.coverage.dtype == np.float32 and rec.coverage.max() > 0
    assert np.isfinite(rec.reconstructed_object).all()
    for key in ("arm", "seconds", "infer_s", "refine_s", "train_s"):
        assert key in rec.metadata
    write_reconstruction(rec, tmp_path / "r.npz")  # the study's writer accepts it


def test_phase_beats_flat(ds, rec, tmp_path):
    # scored exactly as the study scores it (compare adds the Flat floor itself); no
    # registration, so a wrong centring or position convention would show up here
    res = compare(ds, {"Backprojection": rec}, tmp_path, CompareSettings(registration="none"))
    assert res.ok, res.errors
    ours, flat = res.metrics["Backprojection"], res.metrics["Flat"]
    assert ours["ssim"][1] > flat["ssim"][1] + 0.4  # phase SSIM (measured ~0.70 vs ~0.05)
    assert ours["pearson"][1] > 0.9  # phase correlation (measured ~0.94)


def test_deterministic(ds, rec):
    again = resolve("Backprojection").reconstruct(ds, ArmContext())
    assert again.reconstructed_object.tobytes() == rec.reconstructed_object.tobytes()
    assert again.coverage.tobytes() == rec.coverage.tobytes()


def test_solver_seed_sets_the_order(ds):
    arm = resolve("Backprojection", {"iterations": 2})
    a = arm.reconstruct(ds, ArmContext(solver_seed=0)).reconstructed_object
    b = arm.reconstruct(ds, ArmContext(solver_seed=1)).reconstructed_object
    assert a.tobytes() != b.tobytes()


def test_never_reads_the_truth(ds, rec):
    fair = dataclasses.replace(
        ds, objectGuess=None, Y=None, metadata={**ds.metadata, "frame_shape": list(ds.frame_shape)}
    )
    out = resolve("Backprojection").reconstruct(fair, ArmContext())
    assert out.reconstructed_object.tobytes() == rec.reconstructed_object.tobytes()
    assert out.coverage.tobytes() == rec.coverage.tobytes()


def test_entry_point_and_settings():
    arm = resolve("Backprojection", {"iterations": 3})
    assert type(arm) is BackprojectionArm
    assert arm.name == "Backprojection" and arm.settings.iterations == 3
    assert arm.settings.alpha == 0.5
    # another instance of the type under its own name
    other = resolve("BP-fast", {"type": "Backprojection", "iterations": 2, "alpha": 1.0})
    assert type(other) is BackprojectionArm and other.slug == "bp_fast"
    with pytest.raises(ArmError, match=r"^arms\.Backprojection\.iteratons: unknown"):
        resolve("Backprojection", {"iteratons": 3})
    with pytest.raises(ArmError, match=r"arms\.Backprojection\.alpha"):
        resolve("Backprojection", {"alpha": 0.0})


def test_a_design_names_it():
    import tomllib

    from ptychobench.study.design import DesignError, design_from_dict

    listed = design_from_dict(tomllib.loads('arms = ["PtyChi", "Backprojection"]'))
    assert type(listed.arm_objects()["Backprojection"]) is BackprojectionArm
    text = "[arms.PtyChi]\n[arms.Backprojection]\niterations = 30"
    tables = design_from_dict(tomllib.loads(text))
    assert tables.arm_objects()["Backprojection"].settings.iterations == 30
    with pytest.raises(DesignError, match=r"arms\.Backprojection\.iteratons"):
        design_from_dict(tomllib.loads("[arms.Backprojection]\niteratons = 30"))
