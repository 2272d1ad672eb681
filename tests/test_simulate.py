import math

import numpy as np
import pytest
import torch

from ptychobench.physics import extract_patches, forward_amplitude
from ptychobench.simulate import SimulationConfig, simulate

BASE = dict(N=32, object="grf", object_size=96, scan="raster", step_px=6.0, seed=2)


@pytest.fixture(scope="module")
def pair():
    noisy = simulate(SimulationConfig(**BASE, dose=1e3))
    clean = simulate(SimulationConfig(**BASE, dose=1e3, noise="none"))
    return noisy, clean


def test_noiseless_total_photons_equal_dose_exactly(pair):
    _, clean = pair
    photons = np.square(clean.diffraction, dtype=np.float64).sum(axis=(-2, -1))
    assert math.isclose(photons.mean(), 1e3, rel_tol=1e-5)
    assert math.isclose(clean.metadata["realised_mean_photons"], 1e3, rel_tol=1e-6)


def test_mean_photons_equal_dose_within_3_standard_errors(pair):
    noisy, _ = pair
    photons = np.square(noisy.diffraction, dtype=np.float64).sum(axis=(-2, -1))
    se = math.sqrt(1e3 / noisy.n)  # the Poisson error of the mean of per-pattern totals
    assert abs(photons.mean() - 1e3) < 3 * se
    assert math.isclose(noisy.metadata["realised_mean_photons"], photons.mean(), rel_tol=1e-6)


def test_poisson_statistics_at_dose_1e3(pair):
    noisy, clean = pair
    n = np.square(noisy.diffraction, dtype=np.float64)
    lam = np.square(clean.diffraction, dtype=np.float64)
    assert np.abs(n - np.round(n)).max() < 1e-3  # integer counts (float32 sqrt round trip)
    resid = n - lam
    assert abs(resid.sum()) < 3 * math.sqrt(lam.sum())
    assert abs((resid**2).sum() / lam.sum() - 1) < 0.03  # variance ≈ mean


def test_data_is_the_forward_model_of_the_truth(pair):
    _, clean = pair
    obj = torch.from_numpy(clean.objectGuess)
    coords = torch.from_numpy(clean.coords)
    Y = extract_patches(obj, coords, clean.N)
    assert torch.allclose(Y, torch.from_numpy(clean.Y))
    amp = forward_amplitude(torch.from_numpy(clean.probeGuess), Y) * clean.metadata["scale"]
    assert torch.allclose(amp, torch.from_numpy(clean.diffraction), rtol=1e-4, atol=1e-4)


def test_contract_and_metadata(pair):
    noisy, _ = pair
    assert noisy.diffraction.dtype == np.float32 and noisy.diffraction.shape[1:] == (32, 32)
    assert noisy.probeGuess.dtype == np.complex64 and noisy.objectGuess.dtype == np.complex64
    assert noisy.xcoords.dtype == np.float64 and noisy.Y.dtype == np.complex64
    m = noisy.metadata
    assert m["dose"] == 1e3 and m["scale"] > 0
    assert m["seeds"] == {"simulation": 2, "scan": 2, "noise": 3}
    assert m["schema_version"] == 1 and m["transformations"] == []
    # every patch lies inside the object
    assert noisy.xcoords.min() >= 16 and noisy.xcoords.max() <= 96 - 16


def test_same_config_same_arrays_and_seed_changes_noise():
    a = simulate(SimulationConfig(**BASE, dose=100))
    b = simulate(SimulationConfig(**BASE, dose=100))
    c = simulate(SimulationConfig(**BASE, dose=100, noise_seed=99))
    assert np.array_equal(a.diffraction, b.diffraction)
    assert not np.array_equal(a.diffraction, c.diffraction)
    assert np.array_equal(a.objectGuess, c.objectGuess)


def test_chunking_does_not_change_the_noiseless_result():
    a = simulate(SimulationConfig(**BASE, noise="none", chunk_size=7))
    b = simulate(SimulationConfig(**BASE, noise="none"))
    assert np.allclose(a.diffraction, b.diffraction, rtol=1e-6, atol=1e-6)


def test_overrides_are_validated():
    with pytest.raises(ValueError, match="dose"):
        simulate(SimulationConfig(**BASE), dose=-1)
    with pytest.raises(ValueError, match="at most one"):
        SimulationConfig(step_px=3, overlap=0.5)


def test_object_and_probe_from_files(tmp_path, pair):
    from ptychobench.data.io import save

    _, clean = pair
    save(clean, tmp_path / "src.npz")
    save(clean, tmp_path / "src.cxi")
    for ext in ("npz", "cxi"):
        ds = simulate(
            SimulationConfig(
                N=32,
                object=str(tmp_path / f"src.{ext}"),
                probe=str(tmp_path / f"src.{ext}"),
                scan="random",
                n_positions=20,
                seed=1,
            )
        )
        assert np.array_equal(ds.objectGuess, clean.objectGuess)
        assert np.array_equal(ds.probeGuess, clean.probeGuess)
    with pytest.raises(ValueError, match=r"expected shape \(64, 64\)"):
        simulate(
            SimulationConfig(
                N=64,
                probe=str(tmp_path / "src.npz"),
                object="grf",
                object_size=128,
                scan="random",
                n_positions=4,
            )
        )


def test_a_file_named_like_a_generator_does_not_shadow_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grf").write_text("not an object")
    ds = simulate(SimulationConfig(**{**BASE, "noise": "none"}))
    assert ds.objectGuess.shape == (96, 96)
