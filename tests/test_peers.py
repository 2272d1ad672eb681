"""The independent solvers (CDTools, PMACE) and pty-chi's other engines as our arms: each
library's forward model, fed the way the arm feeds it, reproduces our expected counts from the
true object; each arm beats the floor on tiny data, is deterministic on CPU and never reads the
truth; a missing extra is one line, before any job."""

from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ptychobench.arms import ArmContext, ArmError
from ptychobench.arms.registry import resolve
from ptychobench.data.dataset import PtychoDataset, photon_probe, photons_per_pattern
from ptychobench.evaluate.compare import CompareSettings, compare
from ptychobench.physics import extract_patches, intensity
from ptychobench.simulate import simulate

N = 32


@pytest.fixture(scope="module")
def sim() -> PtychoDataset:
    # integer positions (no jitter, whole-pixel step): PMACE rounds positions to whole pixels
    return simulate(N=N, object="image:camera+moon", object_size=72, dose=1e4, step_px=5,
                    seed=0, noise_seed=1)


def _expected(ds: PtychoDataset) -> np.ndarray:
    """Our forward model at the true object: |F(s·P · O_k)|² (the exact photon scale)."""
    p = torch.from_numpy(photon_probe(ds)[0])
    o = torch.from_numpy(ds.objectGuess.astype(np.complex64))
    return intensity(p * extract_patches(o, torch.from_numpy(ds.coords), ds.N)).double().numpy()


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _ctx() -> ArmContext:
    return ArmContext(device="cpu", seed=0, solver_seed=0, gridsize=1, neighbor_count=4,
                      crop_size_M=None, stitch_weighting="flat", phase_sync=0, num_threads=None,
                      data_source="dataset")


def _blind(ds: PtychoDataset) -> PtychoDataset:
    meta = {**ds.metadata, "frame_shape": list(ds.frame_shape)}
    return dataclasses.replace(ds, objectGuess=None, Y=None, metadata=meta)


def test_the_arms_probe_is_on_the_photon_scale_the_data_give(sim):
    from ptychobench.peers import _photon_probe

    p = _photon_probe(sim)
    mean_photons = photons_per_pattern(sim.diffraction).mean()
    assert float(np.square(np.abs(p), dtype=np.float64).sum()) == pytest.approx(mean_photons,
                                                                                rel=1e-5)
    # the same function of the data with or without the truth and the simulator's scale
    assert np.array_equal(_photon_probe(_blind(sim)), p)


# --------------------------------------------------------------------------------- PMACE


def test_pmace_forward_model_fed_as_the_arm_feeds_it_reproduces_our_counts(sim):
    pytest.importorskip("xptycho")
    from ptychobench.peers import _PMACE_MARGIN, pmace_scan

    scan, model = pmace_scan(sim)
    m = _PMACE_MARGIN
    obj = np.pad(sim.objectGuess.astype(np.complex64), m, constant_values=1)
    p = photon_probe(sim)[0]
    expected = _expected(sim)
    assert _rel(model.forward(obj, p).astype(np.float64) ** 2, expected) < 1e-5  # found 6e-8
    # its frames are our counts, its positions ours in metres (row = y, column = x)
    assert np.array_equal(scan.frames, np.square(sim.diffraction.astype(np.float32)))
    for axis in (0, 1):  # control: the truth one pixel off must not fit
        assert _rel(model.forward(np.roll(obj, 1, axis), p).astype(np.float64) ** 2,
                    expected) > 1e-2


def test_pmace_rounds_fractional_positions_and_says_by_how_much():
    pytest.importorskip("xptycho")
    from ptychobench.peers import PMACEConfig, pmace_reconstruct

    ds = simulate(N=N, object="grf", object_size=64, dose=1e4, step_px=6, jitter_px=0.4,
                  seed=0, noise_seed=1)
    rec = pmace_reconstruct(_blind(ds), PMACEConfig(iterations=2), device="cpu")
    assert 0 < rec.metadata["positions_rounded_by_px"] <= 0.5


# ------------------------------------------------------------------------------- CDTools


def test_cdtools_forward_model_fed_as_the_arm_feeds_it_reproduces_our_counts(sim):
    pytest.importorskip("cdtools")
    from ptychobench.peers import cdtools_model

    with tempfile.TemporaryDirectory() as tmp:
        model, dataset = cdtools_model(_blind(sim), Path(tmp))
    # the arm's probe is the data's photon scale; the exact one proves the frame map
    with torch.no_grad():
        model.probe.data[0] = torch.as_tensor(photon_probe(sim)[0]) / model.probe_norm
    min_t = model.min_translation.detach().numpy().astype(np.float64)
    off = np.rint(min_t - (N - 1) / 2).astype(int)  # our index = its index + off
    obj = np.zeros(tuple(model.obj.shape[-2:]), np.complex64)
    h, w = sim.objectGuess.shape
    obj[-off[0] : -off[0] + h, -off[1] : -off[1] + w] = sim.objectGuess
    model.obj.data = torch.as_tensor(obj)
    (index, translations), _ = dataset[:]
    with torch.no_grad():
        got = model.forward(index, translations).double().numpy()
    assert _rel(got, _expected(sim)) < 1e-4
    # and what comes back through the arm's map is our frame again
    from ptychobench.peers import cdtools_to_our_frame

    back, residual = cdtools_to_our_frame(obj, min_t, N, sim.frame_shape)
    assert np.array_equal(back, sim.objectGuess.astype(np.complex64))
    assert max(abs(r) for r in residual) < 1e-3


# ---------------------------------------------------------------------------- per arm


ARMS = {
    "CDTools": ("cdtools", {"epochs": 20}),
    "PMACE": ("xptycho", {"iterations": 20}),
    # pty-chi's other engines: the same package, other algorithms, held to the same three checks
    "PtyChi-ePIE": ("ptychi", {"epochs": 20}),
    "PtyChi-DM": ("ptychi", {"epochs": 50}),
}
# the photons per pattern each arm is checked at. DM has no noise model and does not settle under
# Poisson noise: on this scan at 1e4 its phase SSIM after 10/30/50/100 epochs was 0.711/-0.027/
# 0.558/0.076 (Flat 0.598), and 50 epochs gave 0.604 on a CPU without AVX-512 and 0.558 on one
# with it. At 1e6 it converges (0.965/0.960/0.977/0.981), so that is where it is held to a margin.
DOSE = {"CDTools": 1e4, "PMACE": 1e4, "PtyChi-ePIE": 1e4, "PtyChi-DM": 1e6}
MARGIN = 0.1  # above the floor, on this tiny scan


@pytest.fixture(scope="module")
def runs(sim):
    """Each arm twice: on the truth-stripped data the study hands it, and on the full file (the
    truth and the simulator's scale inside); with the data it was run on."""
    data = {1e4: sim}
    out = {}
    for name, (module, settings) in ARMS.items():
        if importlib.util.find_spec(module) is None:
            continue
        dose = DOSE[name]
        if dose not in data:
            data[dose] = simulate(N=N, object="image:camera+moon", object_size=72, dose=dose,
                                  step_px=5, seed=0, noise_seed=1)
        ds = data[dose]
        arm = resolve(name, settings)
        out[name] = (ds, arm.reconstruct(_blind(ds), _ctx()), arm.reconstruct(ds, _ctx()))
    return out


@pytest.mark.parametrize("name", list(ARMS))
def test_each_peer_arm_beats_the_floor_deterministically_without_the_truth(name, runs):
    pytest.importorskip(ARMS[name][0])
    ds, blind, full = runs[name]
    # two runs, one handed the truth: the same bytes (deterministic on CPU, and the truth and
    # the simulator's scale unused)
    assert np.array_equal(blind.reconstructed_object, full.reconstructed_object)
    assert blind.reconstructed_object.shape == ds.frame_shape
    assert blind.metadata["arm"] == name and blind.metadata["seconds"] > 0
    with tempfile.TemporaryDirectory() as tmp:
        res = compare(ds, {name: blind}, tmp, CompareSettings())
    got, flat = res.metrics[name]["ssim"][1], res.metrics["Flat"]["ssim"][1]
    # found CDTools 0.76, PMACE 0.80, ePIE 0.77 vs Flat 0.598 at 1e4; DM 0.977 at 1e6
    assert got > flat + MARGIN, (got, flat)


def test_a_missing_extra_is_one_line_naming_the_arm(monkeypatch):
    import ptychobench.arms.registry as registry

    monkeypatch.setattr(registry, "missing_peer", lambda module, arm: (
        f"install ptychobench[peers] for the {arm} arm (pip install -e '.[peers]'; "
        f"{module} is not installed)"
    ))
    with pytest.raises(ArmError) as err:
        resolve("CDTools")
    msg = str(err.value)
    assert msg.startswith("arms.CDTools: install ptychobench[peers] for the CDTools arm")
    assert "\n" not in msg
    with pytest.raises(ArmError, match="for the PMACE arm"):
        resolve("PMACE")
    resolve("PtyChi-ePIE")  # pty-chi's engines need nothing extra


def test_missing_peer_finds_what_is_not_installed():
    from ptychobench.peers import missing_peer

    assert missing_peer("numpy", "X") is None
    msg = missing_peer("no_such_module_ptychobench", "Mine")
    assert msg == ("install ptychobench[peers] for the Mine arm (pip install -e '.[peers]'; "
                   "no_such_module_ptychobench is not installed)")
