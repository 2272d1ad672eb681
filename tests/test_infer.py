"""Inference: the seed's bug designed out, guards, diagnostics, streaming."""

import json
import logging

import numpy as np
import pytest
import torch

from ptychobench.data.grouping import make_view
from ptychobench.data.split import split
from ptychobench.evaluate.align import register
from ptychobench.fit import fit
from ptychobench.infer import (
    InferenceError,
    check_input_shift,
    data_statistics,
    infer,
    prepare_baseline_inference_data,
)
from ptychobench.models.bundle import load_bundle
from ptychobench.simulate import SimulationConfig, simulate

TRAIN = {"epochs": 12, "batch_size": 8, "seed": 0, "val_fraction": 0.0, "num_threads": 2}


def test_centring_gives_mean_zero_and_preserves_differences():
    rng = np.random.default_rng(0)
    pos = rng.uniform(150, 400, size=(10, 4, 2))
    d = rng.random((10, 4, 8, 8)).astype(np.float32)
    inp = prepare_baseline_inference_data(d, pos)
    assert inp.patterns.shape == (40, 1, 8, 8)
    assert np.array_equal(inp.positions, pos.reshape(40, 2))  # each pattern's own position
    assert abs(inp.centred.mean()) < 1e-9
    assert np.allclose(np.diff(inp.centred, axis=0), np.diff(inp.positions, axis=0))
    assert np.allclose(inp.centred + inp.centre, inp.positions)
    assert inp.stats["positions_mean"] == pytest.approx(list(pos.reshape(40, 2).mean(0)))


def test_non_square_channel_count_rejected():
    with pytest.raises(ValueError, match="5 channels is not a square gridsize"):
        prepare_baseline_inference_data(np.zeros((2, 5, 8, 8)), np.zeros((2, 5, 2)))


@pytest.fixture(scope="module")
def shifted_splits():
    """Train positions with mean ≈185 px, test ≈273 px, like the reference's failing study."""
    # a smooth, high-contrast object: a few seconds of training give images that register
    ds = simulate(
        SimulationConfig(
            N=32,
            object="grf",
            object_size=380,
            a_min=0.3,
            scan="raster",
            step_px=5.0,
            dose=1e5,
            seed=2,
        )
    )
    keep = (ds.xcoords > 140) & (ds.xcoords < 320) & (ds.ycoords > 140) & (ds.ycoords < 320)
    ds = ds.select(np.flatnonzero(keep))
    train, test = split(ds, axis="y", fraction=0.5)
    m_train, m_test = train.coords.mean(), test.coords.mean()
    assert 175 < m_train < 215 and 250 < m_test < 290
    return train, test


@pytest.mark.parametrize("kind,gridsize", [("baseline", 1), ("pinn", 1), ("pinn", 2)])
def test_shifted_test_split_gives_nonzero_images_registered_within_1px(
    shifted_splits, tmp_path, kind, gridsize
):
    train, test = shifted_splits
    tv = make_view(train, 2, neighbor_count=6) if gridsize == 2 else train
    fit(
        tv,
        kind,
        tmp_path / "m",
        gridsize=gridsize,
        train_config=TRAIN,
        n_filters_scale=0.25,
        progress=False,
    )
    net, cfg = load_bundle(tmp_path / "m")
    view = make_view(test, 2, neighbor_count=6) if gridsize == 2 else test
    rec = infer(net, view, train_stats=cfg["data"], debug_dir=tmp_path / "dbg")
    img = rec.reconstructed_object
    covered = rec.coverage > 0
    assert np.isfinite(img).all() and np.count_nonzero(img[covered]) == covered.sum()
    rows = np.flatnonzero(covered.any(1))
    cols = np.flatnonzero(covered.any(0))
    sl = (slice(rows.min() + 4, rows.max() - 4), slice(cols.min() + 4, cols.max() - 4))
    # the baseline's phase is still untrained at this budget (it learns amplitude first), so it
    # is registered on amplitude; the PINNs on the complex image, as compare does
    on = "amplitude" if kind == "baseline" else "complex"
    dy, dx = register(img[sl], test.objectGuess[sl], on=on)
    assert abs(dy) < 1 and abs(dx) < 1, (dy, dx)
    if kind == "baseline":
        stats = json.loads((tmp_path / "dbg" / "baseline_debug_stats.json").read_text())
        raw, centred = stats["offsets_raw"], stats["offsets_centred"]
        assert raw["mean"] > 240 and abs(centred["mean"]) < 1e-6
        assert stats["position_stats"]["positions_mean"][1] > 250
        assert (tmp_path / "dbg" / "baseline_debug.npz").exists()


def test_dose_mismatch_warns_with_both_numbers(caplog):
    ds = simulate(
        SimulationConfig(
            N=32, object="grf", object_size=96, scan="raster", step_px=8.0, dose=1e3, seed=0
        )
    )
    train_stats = {**data_statistics(ds), "mean_photons": 1e4}
    with caplog.at_level(logging.WARNING):
        report = check_input_shift(train_stats, ds, "PtychoPINN")
    msg = " ".join(report["warnings"])
    measured = data_statistics(ds)["mean_photons"]
    assert "trained at 1e+04" in msg and f"applied to {measured:.4g}" in msg
    assert "dose mismatch" in caplog.text
    with pytest.raises(InferenceError, match="N=64"):
        check_input_shift({**train_stats, "N": 64}, ds, "PtychoPINN")


class _Zero(torch.nn.Module):
    kind = "baseline"

    def predict(self, d, o):
        n = d.shape[0] * d.shape[1]
        return torch.zeros((n, d.shape[-1], d.shape[-1]), dtype=torch.complex64)


def test_all_zero_output_is_a_hard_error_after_debug_artifacts(tmp_path):
    ds = simulate(
        SimulationConfig(N=32, object="grf", object_size=96, scan="raster", step_px=8.0, seed=0)
    )
    with pytest.raises(InferenceError, match=r"Baseline: stitched output is all zeros.*d\.npz"):
        infer(_Zero(), ds, data_source="d.npz", debug_dir=tmp_path)
    stats = json.loads((tmp_path / "baseline_debug_stats.json").read_text())
    assert stats["output_amplitude"]["nonzero"] == 0 and stats["input"]["nonzero"] > 0
    with np.load(tmp_path / "baseline_debug.npz", allow_pickle=False) as f:
        assert {"inputs", "positions_raw", "positions_centred", "outputs"} <= set(f.files)


def test_streaming_chunks_equal_one_shot(shifted_splits, tmp_path):
    train, test = shifted_splits
    fit(
        train,
        "pinn",
        tmp_path / "m",
        train_config={**TRAIN, "epochs": 1},
        n_filters_scale=0.25,
        progress=False,
    )
    net, cfg = load_bundle(tmp_path / "m")
    a = infer(net, test, batch_size=7).reconstructed_object
    b = infer(net, test, batch_size=10_000).reconstructed_object
    assert np.allclose(a, b, atol=1e-5)
