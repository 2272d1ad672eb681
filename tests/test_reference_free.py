"""Reference-free scores (held-out Poisson NLL, half-scan FRC), checked where the truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from ptychobench.evaluate.reference_free import (
    half_scan_frc,
    heldout_count,
    heldout_indices,
    heldout_nll,
    interleaved_halves,
    scanned_box,
)
from ptychobench.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def sim():
    return simulate(SimulationConfig(N=32, object="grf", object_size=112, dose=1e5, seed=1))


def _score(ds, obj, k=24):
    counts = ds.diffraction[:k].astype(np.float64) ** 2
    return heldout_nll(obj, ds.probeGuess, ds.coords[:k], counts)


def test_heldout_indices_are_fixed_sorted_and_a_tenth():
    a = heldout_indices(223, 0.1, seed=5)
    assert np.array_equal(a, heldout_indices(223, 0.1, seed=5))
    assert not np.array_equal(a, heldout_indices(223, 0.1, seed=6))
    assert len(a) == heldout_count(223, 0.1) == 22 and np.all(np.diff(a) > 0)
    assert heldout_count(3, 0.1) == 1 and heldout_count(3, 0.0) == 0
    assert heldout_count(2, 0.5) == 1  # never every position
    with pytest.raises(ValueError, match="0 <= fraction < 1"):
        heldout_indices(10, 1.0, 0)


@pytest.mark.parametrize("n", [2, 7, 120])
def test_half_scans_are_disjoint_interleaved_and_cover_the_scan(n):
    a, b = interleaved_halves(n)
    assert not set(a) & set(b) and sorted([*a, *b]) == list(range(n))
    assert len(a) - len(b) in (0, 1)
    merged = np.empty(n, dtype=np.int64)
    merged[0::2], merged[1::2] = a, b
    assert np.array_equal(merged, np.arange(n))  # they alternate along the scan order


def test_the_truth_predicts_withheld_patterns_better_than_degraded_objects(sim):
    truth = _score(sim, sim.objectGuess)
    rng = np.random.default_rng(0)
    noisy = _score(sim, sim.objectGuess * np.exp(1j * rng.normal(0, 0.5, sim.objectGuess.shape)))
    flat = _score(sim, np.full_like(sim.objectGuess, np.abs(sim.objectGuess).mean()))
    assert truth.relative < 0.5 < flat.relative and truth.relative < noisy.relative
    # dose 1e5 and the true object: the fitted scale is the simulation's own (photons per |F|²)
    assert truth.scale == pytest.approx(sim.metadata["scale"] ** 2, rel=0.02)


def test_heldout_nll_ignores_the_objects_amplitude_scale_and_global_phase(sim):
    ref = _score(sim, sim.objectGuess)
    other = _score(sim, 3.0 * np.exp(1j * 1.2) * sim.objectGuess)
    assert other.relative == pytest.approx(ref.relative, rel=1e-5)
    assert other.scale == pytest.approx(ref.scale / 9.0, rel=1e-5)


def test_heldout_nll_refuses_bad_counts(sim):
    counts = sim.diffraction[:4].astype(np.float64) ** 2
    counts[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        heldout_nll(sim.objectGuess, sim.probeGuess, sim.coords[:4], counts)
    with pytest.raises(ValueError, match=r"\(K, N, N\)"):
        heldout_nll(sim.objectGuess, sim.probeGuess, sim.coords[:3], counts)


def test_half_scan_frc_of_identical_images_is_one_and_of_independent_noise_about_zero():
    from ptychobench.evaluate.frc import frc

    rng = np.random.default_rng(3)
    img = np.exp(1j * rng.normal(0, 0.3, (96, 96))) * (1 + 0.2 * rng.random((96, 96)))
    curve = frc(img, img).curve[1:]
    np.testing.assert_allclose(curve, 1.0, atol=1e-12)
    a = rng.normal(size=(96, 96)) + 1j * rng.normal(size=(96, 96))
    b = rng.normal(size=(96, 96)) + 1j * rng.normal(size=(96, 96))
    noise = frc(a, b).curve[1:]
    assert abs(noise.mean()) < 0.03 and np.abs(noise).max() < 0.5
    box = (slice(0, 96), slice(0, 96))
    same = half_scan_frc(img, img * np.exp(1j * 0.7), box)  # a global phase does not count
    assert same == {"halfbit": (0.5, 0.5), "1over7": (0.5, 0.5)}
    indep = half_scan_frc(a, b, box)
    assert max(indep["halfbit"] + indep["1over7"]) < 0.1


def test_scanned_box_spans_the_positions_and_stays_inside_the_image():
    coords = np.array([[10.2, 20.0], [50.0, 30.5], [30.0, 80.9]])
    rows, cols = scanned_box(coords, (64, 60))
    assert (rows.start, rows.stop) == (20, 64) and (cols.start, cols.stop) == (10, 51)
