"""Test-time refinement: fair (no ground truth read), couples the scan, lowers its own loss."""

import dataclasses

import numpy as np
import pytest
import torch

from ptychobench.refine import ARM, TTRConfig, refine
from ptychobench.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def sim():
    return simulate(
        SimulationConfig(
            N=32,
            object="image:camera+astronaut",
            object_size=80,
            scan="raster",
            step_px=5.0,
            dose=1e4,
            seed=2,
        )
    )


def _pinn(ds, gridsize=1, **kw):
    from ptychobench.fit import model_config_for
    from ptychobench.models import build_model

    torch.manual_seed(0)
    cfg = model_config_for("pinn", ds, gridsize, n_filters_scale=0.25, max_offset=8.0) | kw
    return build_model(cfg, torch.from_numpy(ds.probeGuess))


CFG = TTRConfig(epochs=3, batch_size=16, lr=1e-3, device="cpu")


def test_refinement_lowers_the_whole_scan_loss_and_reports_its_cost(sim):
    res = refine(_pinn(sim), sim, CFG)
    m = res.reconstruction.metadata
    assert m["arm"] == ARM and m["epochs"] == 3 == res.epochs_run
    assert m["loss_end"] < m["loss_start"], (m["loss_start"], m["loss_end"])
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert m["refine_s"] > 0 and m["infer_s"] > 0
    assert m["refine_s"] + m["infer_s"] == pytest.approx(m["seconds"])
    img, cov = res.reconstruction.reconstructed_object, res.reconstruction.coverage
    assert img.shape == sim.objectGuess.shape and np.isfinite(img).all()
    assert np.all(img[cov <= 1e-3] == 0) and (cov > 1e-3).sum() > 1000


def test_never_reads_the_ground_truth(sim):
    """objectGuess and Y replaced by garbage: the same bytes; deleted: the same image."""
    a = refine(_pinn(sim), sim, CFG).reconstruction
    rng = np.random.default_rng(0)
    garbage = dataclasses.replace(
        sim,
        objectGuess=rng.random(sim.objectGuess.shape).astype(np.complex64),
        Y=None if sim.Y is None else rng.random(sim.Y.shape).astype(np.complex64),
    )
    b = refine(_pinn(sim), garbage, CFG).reconstruction
    assert np.array_equal(a.reconstructed_object, b.reconstructed_object)
    gone = dataclasses.replace(sim, objectGuess=None, Y=None)
    c = refine(_pinn(sim), gone, CFG).reconstruction
    h = min(a.reconstructed_object.shape[0], c.reconstructed_object.shape[0])
    w = min(a.reconstructed_object.shape[1], c.reconstructed_object.shape[1])
    assert np.array_equal(a.reconstructed_object[:h, :w], c.reconstructed_object[:h, :w])
    assert not np.any(c.reconstructed_object[h:, :]) and not np.any(c.reconstructed_object[:, w:])


def test_same_settings_same_bytes_and_a_time_budget_stops_it(sim):
    a = refine(_pinn(sim), sim, CFG).reconstruction.reconstructed_object
    b = refine(_pinn(sim), sim, CFG).reconstruction.reconstructed_object
    assert np.array_equal(a, b)
    res = refine(_pinn(sim), sim, CFG.model_copy(update={"max_seconds": 1e-6}))
    assert res.stop_reason == "time_budget" and res.epochs_run == 1


def test_refines_a_gs2_shared_model_pattern_by_pattern(sim):
    res = refine(_pinn(sim, 2), sim, CFG.model_copy(update={"epochs": 1}))
    assert res.reconstruction.metadata["gridsize"] == 2
    assert np.isfinite(res.reconstruction.reconstructed_object).all()


def test_refuses_models_it_cannot_refine(sim):
    with pytest.raises(ValueError, match="channel_mode 'shared'"):
        refine(_pinn(sim, 2, channel_mode="joint"), sim, CFG)
    from ptychobench.fit import model_config_for
    from ptychobench.models import build_model

    base = build_model(model_config_for("baseline", sim, 1, n_filters_scale=0.25))
    with pytest.raises(ValueError, match="expected a PtychoPINN"):
        refine(base, sim, CFG)
