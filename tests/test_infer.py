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


# ------------------------------------------------------------------------- stitch weighting


@pytest.fixture(scope="module")
def small_sim():
    return simulate(
        SimulationConfig(
            N=32, object="grf", object_size=112, scan="raster", step_px=6.0, dose=1e4, seed=4
        )
    )


def _untrained(kind, ds, gridsize, **kw):
    from ptychobench.fit import model_config_for
    from ptychobench.models import build_model

    torch.manual_seed(0)
    cfg = model_config_for(kind, ds, gridsize, n_filters_scale=0.25, max_offset=8.0) | kw
    return build_model(cfg, torch.from_numpy(ds.probeGuess))


@pytest.mark.parametrize("channel_mode", ["shared", "joint"])
def test_gs2_probe_stitching_gives_a_finite_image_and_records_the_weighting(
    small_sim, channel_mode
):
    from ptychobench.stitch import stitch

    view = make_view(small_sim, 2, neighbor_count=6)
    net = _untrained("pinn", view, 2, channel_mode=channel_mode)
    rec = infer(net, view, stitch_weighting="probe", batch_size=17)
    img = rec.reconstructed_object
    assert rec.metadata["stitch_weighting"] == "probe"
    assert np.isfinite(img).all() and np.count_nonzero(img) > 1000
    assert np.all(img[rec.coverage <= 1e-3] == 0)
    flat = infer(net, view)
    assert flat.metadata["stitch_weighting"] == "flat"
    assert not np.allclose(flat.reconstructed_object, img)
    if channel_mode == "shared":
        # a group adds Σ_members |P|²·patch: the same as stitching every member on its own
        # (the merge's bilinear shifts, here by half pixels, are the only difference: they
        # blur the weight maps but keep their total)
        groups = view.groups
        patches = net.decode_patterns(torch.from_numpy(view.diffraction)).numpy()
        ref, ref_cov = stitch(
            patches[groups.ravel()],
            view.coords[groups.ravel()],
            img.shape,
            weighting="probe",
            probe=net.probe,
        )
        assert rec.coverage.sum() == pytest.approx(ref_cov.sum(), rel=1e-5)
        both = (rec.coverage > 0.5) & (ref_cov > 0.5)
        assert both.sum() > 0.9 * (ref_cov > 0.5).sum()
        err = np.abs(img[both] - ref[both]).mean() / np.abs(ref[both]).mean()
        assert err < 0.005, err


def test_gs2_group_stitch_equals_member_stitch_at_integer_offsets(small_sim):
    """Merged patch × Σw at the group centre == each member × |P|² at its own position."""
    from ptychobench.stitch import Stitcher

    net = _untrained("pinn", small_sim, 2)
    N = 32
    offsets = torch.tensor([[[-2.0, -1.0], [2.0, 1.0], [-1.0, 2.0], [1.0, -2.0]]]).repeat(3, 1, 1)
    centres = np.array([[30.0, 30.0], [36.0, 31.0], [33.0, 40.0]])
    torch.manual_seed(5)
    patches = net.decode(torch.rand(3, 4, N, N) * 10)
    merged, w = net.predict_from_patches(
        patches, offsets, weighting="probe", return_weight=True, min_weight=0.0
    )
    a = Stitcher((80, 80), N, 8, weighting="probe", probe=net.probe)
    a.add(merged, centres, w)
    b = Stitcher((80, 80), N, 8, weighting="probe", probe=net.probe)
    b.add(patches.reshape(12, N, N), (centres[:, None, :] + offsets.numpy()).reshape(12, 2))
    (ia, ca), (ib, cb) = a.result(), b.result()
    np.testing.assert_allclose(ca, cb, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ia, ib, rtol=0, atol=1e-5)
    assert np.count_nonzero(ia) > 300


@pytest.mark.parametrize("kind", ["baseline", "pinn"])
def test_gs1_probe_stitching_weights_by_the_probe(small_sim, kind):
    from ptychobench.stitch import stitch

    net = _untrained(kind, small_sim, 1)
    rec = infer(net, small_sim, stitch_weighting="probe")
    img = rec.reconstructed_object
    assert rec.metadata["stitch_weighting"] == "probe"
    assert np.isfinite(img).all() and np.any(img)
    zeros = torch.zeros((small_sim.n, 1, 2))
    patches = net.predict(torch.from_numpy(small_sim.diffraction[:, None]), zeros)
    ref, _ = stitch(
        patches, small_sim.coords, img.shape, weighting="probe", probe=small_sim.probeGuess
    )
    np.testing.assert_allclose(img, ref, rtol=0, atol=1e-4)


def test_unknown_stitch_weighting_is_rejected(small_sim):
    net = _untrained("pinn", small_sim, 1)
    with pytest.raises(ValueError, match="stitch weighting: expected 'flat' or 'probe', found 'x'"):
        infer(net, small_sim, stitch_weighting="x")


def test_phase_sync_keeps_coverage_changes_only_phases_and_zero_is_the_plain_stitch(small_sim):
    view = make_view(small_sim, 2, neighbor_count=6)
    net = _untrained("pinn", view, 2)
    plain = infer(net, view)
    zero = infer(net, view, phase_sync=0)
    synced = infer(net, view, phase_sync=20)
    assert np.array_equal(plain.reconstructed_object, zero.reconstructed_object)
    assert np.array_equal(plain.coverage, synced.coverage)
    assert synced.metadata["phase_sync"] == 20 and plain.metadata["phase_sync"] == 0
    a, b = plain.reconstructed_object, synced.reconstructed_object
    covered = plain.coverage > 1e-3
    # patches are only rotated (amplitudes bounded by the head) and rotated to agree: the
    # stitched sum Σ w·patch gains energy (the synchronisation's objective)
    assert np.abs(b).max() <= net.config.amplitude_max + 1e-5
    w = plain.coverage
    assert np.sum(np.abs(b * w) ** 2) > np.sum(np.abs(a * w) ** 2)
    assert np.all(b[~covered] == 0) and not np.allclose(a, b)


@pytest.mark.parametrize(
    "kind, gridsize, kw",
    [
        ("pinn", 1, {}),
        ("baseline", 1, {}),
        ("pinn", 2, {"phase_sync": 5}),
        ("pinn", 2, {"stitch_weighting": "probe"}),
    ],
)
def test_fast_path_equals_the_plain_eager_path_and_leaves_the_model_as_it_was(
    small_sim, kind, gridsize, kw
):
    ds = make_view(small_sim, 2, neighbor_count=6) if gridsize == 2 else small_sim
    net = _untrained(kind, ds, gridsize)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    plain = infer(net, ds, fast=False, **kw)
    fast = infer(net, ds, fast=True, **kw)
    assert plain.metadata["fast"] is False and fast.metadata["fast"] is True
    np.testing.assert_allclose(
        fast.reconstructed_object, plain.reconstructed_object, rtol=0, atol=1e-5
    )
    np.testing.assert_array_equal(fast.coverage, plain.coverage)
    for k, v in net.state_dict().items():  # same values, default (contiguous) layout again
        assert torch.equal(v, before[k]) and v.is_contiguous(), k


def test_compiled_path_equals_the_eager_path_on_cpu(small_sim):
    """torch.compile (inductor, one graph at the batch size; the last chunk is padded) gives the
    eager outputs within 1e-5, and says that it compiled."""
    net = _untrained("pinn", small_sim, 1)
    n = small_sim.n
    batch = 48
    assert n % batch, "the last chunk must be partial, to exercise the padding"
    eager = infer(net, small_sim, batch_size=batch, fast=False)
    compiled = infer(net, small_sim, batch_size=batch, fast=False, compile=True)
    assert eager.metadata["compiled"] is False and compiled.metadata["compiled"] is True
    np.testing.assert_allclose(
        compiled.reconstructed_object, eager.reconstructed_object, rtol=0, atol=1e-5
    )
    np.testing.assert_array_equal(compiled.coverage, eager.coverage)


@pytest.mark.parametrize("where", ["build", "call"])
def test_compile_failure_falls_back_to_eager_with_one_warning(
    small_sim, monkeypatch, caplog, where
):
    net = _untrained("baseline", small_sim, 1)
    eager = infer(net, small_sim, batch_size=64)

    def broken_compile(fn, **kw):
        if where == "build":
            raise RuntimeError("no C++ compiler found")

        def run(*a, **k):
            raise RuntimeError("inductor: backend failed")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING, logger="ptychobench.infer"):
        rec = infer(net, small_sim, batch_size=64, compile=True)
    assert rec.metadata["compiled"] is False
    warnings = [r for r in caplog.records if "torch.compile unavailable" in r.getMessage()]
    assert len(warnings) == 1
    np.testing.assert_array_equal(rec.reconstructed_object, eager.reconstructed_object)


@pytest.mark.parametrize("kind, gridsize", [("pinn", 1), ("baseline", 1), ("pinn", 2)])
def test_bf16_autocast_inference_stays_close_to_fp32_and_complex64(small_sim, kind, gridsize):
    ds = make_view(small_sim, 2, neighbor_count=6) if gridsize == 2 else small_sim
    net = _untrained(kind, ds, gridsize)
    fp32 = infer(net, ds)
    bf16 = infer(net, ds, amp=True)
    assert fp32.metadata["amp"] is None and bf16.metadata["amp"] == "bf16"
    assert bf16.reconstructed_object.dtype == np.complex64
    np.testing.assert_array_equal(bf16.coverage, fp32.coverage)
    diff = np.abs(bf16.reconstructed_object - fp32.reconstructed_object)
    # bf16 keeps 8 bits of mantissa: ~1e-2 relative, and it did change something
    assert 0 < diff.max() < 2e-2 * np.abs(fp32.reconstructed_object).max()
