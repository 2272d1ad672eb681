"""pty-chi adapter: conventions pinned by exact fixed points, fairness, quality, metadata."""

import numpy as np
import pytest
from typer.testing import CliRunner

from ptychobench.cli import app
from ptychobench.data.io import save
from ptychobench.data.recon import read_reconstruction
from ptychobench.evaluate.compare import compare
from ptychobench.iterative import IterativeConfig, probe_photon_scale, ptychi_available, reconstruct
from ptychobench.simulate import SimulationConfig, simulate

pytestmark = pytest.mark.skipif(not ptychi_available()[0], reason="pty-chi not importable")


def small(**kw):
    base = dict(
        N=32, object="image:camera+astronaut", object_size=96, scan="raster", noise="none", seed=3
    )
    return simulate(SimulationConfig(**{**base, **kw}))


def drift(ds, **kw):
    cfg = IterativeConfig(
        epochs=2,
        device="cpu",
        progress=False,
        init_from_truth=True,
        probe_scale=ds.metadata["scale"],
        **kw,
    )
    rec = reconstruct(ds, cfg)
    sl = (slice(24, 72), slice(24, 72))
    a, b = rec.reconstructed_object[sl], ds.objectGuess[sl]
    return float(np.linalg.norm(a - b) / np.linalg.norm(b)), rec


def test_truth_is_a_fixed_point_for_integer_positions():
    # pins the orthonormal-FFT probe factor, fft_shift, the position origin and the frame
    ds = small(step_px=6.0)
    assert np.all(ds.xcoords % 1 == 0)
    err, rec = drift(ds)
    assert err < 1e-4
    assert rec.reconstructed_object.shape == ds.objectGuess.shape
    assert rec.metadata["init_from_truth"] is True
    assert "not a fair comparison" in rec.metadata["diagnostic"]


def test_subpixel_positions_match_to_the_interpolation_model():
    # our Fourier-interpolated object vs pty-chi's shifted probe: equal for band-limited objects;
    # a sharp-edged object leaves a few per cent
    ds = small(step_px=5.3)
    err, _ = drift(ds)
    assert err < 0.05
    shifted = ds.copy()
    shifted.xcoords = shifted.xcoords + 1.0  # a one-pixel convention error is far worse
    err_wrong, _ = drift(shifted)
    assert err_wrong > 3 * err


def test_noiseless_reconstruction_from_ones_reaches_phase_ssim_095():
    ds = simulate(
        SimulationConfig(
            N=64,
            object="image:camera+astronaut",
            object_size=160,
            scan="raster",
            overlap=0.7,
            noise="none",
            seed=1,
        )
    )
    rec = reconstruct(ds, IterativeConfig(epochs=100, device="cpu", progress=False))
    assert rec.metadata["init_from_truth"] is False
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        res = compare(ds, {"PtyChi": rec}, d)
    m = res.metrics["PtyChi"]
    assert m["ssim"][1] > 0.95, m["ssim"]
    assert m["nrmse"] < 0.1
    assert m["ssim"][1] > res.metrics["Flat"]["ssim"][1] + 0.5


def test_fair_defaults_and_metadata():
    ds = small(step_px=8.0, noise="poisson", dose=1e4)
    rec = reconstruct(ds, IterativeConfig(epochs=1, device="cpu", progress=False))
    m = rec.metadata
    assert m["algorithm"] == "LSQML" and m["epochs"] == 1 and m["seconds"] > 0
    assert m["n_patterns"] == ds.n and m["versions"]["ptychi"] == ptychi_available()[1]
    assert m["init_from_truth"] is False and m["diagnostic"] is None
    # the probe is known and fixed: it comes back unchanged
    assert np.allclose(rec.reconstructed_probe, ds.probeGuess, atol=1e-5)
    assert m["probe_photon_scale"] == pytest.approx(probe_photon_scale(ds))
    assert rec.coverage.shape == ds.objectGuess.shape and rec.coverage.max() > 0


@pytest.mark.parametrize("engine,name", [("epie", "ePIE"), ("dm", "DM")])
def test_other_engines_run(engine, name):
    ds = small(step_px=8.0)
    rec = reconstruct(ds, IterativeConfig(engine=engine, epochs=2, device="cpu", progress=False))
    assert rec.metadata["algorithm"] == name and np.isfinite(rec.reconstructed_object).all()


def test_unavailable_ptychi_is_reported(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("ptychi"):
            raise ImportError("no module named ptychi (test)")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    ok, reason = ptychi_available()
    assert not ok and "ptychi" in reason
    with pytest.raises(RuntimeError, match="pty-chi is not available"):
        reconstruct(small(step_px=8.0), IterativeConfig(epochs=1, progress=False))


def test_cli_reconstruct(tmp_path):
    ds = small(step_px=8.0)
    save(ds, tmp_path / "d.npz")
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "reconstruct",
            str(tmp_path / "d.npz"),
            "--out",
            str(tmp_path / "r.npz"),
            "--epochs",
            "2",
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    rec = read_reconstruction(tmp_path / "r.npz", ds.objectGuess.shape)
    assert rec.metadata["epochs"] == 2
    for extra, word in ((["--engine", "sgd"], "engine"), (["--epochs", "0"], "epochs")):
        r = runner.invoke(
            app, ["reconstruct", str(tmp_path / "d.npz"), "--out", str(tmp_path / "x.npz"), *extra]
        )
        assert r.exit_code == 2 and word in r.stderr and not (tmp_path / "x.npz").exists()


def test_same_data_same_bytes_with_two_threads():
    """pty-chi's scatter-style updates are made deterministic: 2 threads, 3 runs, 1 result."""
    import torch

    ds = small(dose=1e3)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [
            reconstruct(ds, IterativeConfig(epochs=6, progress=False, device="cpu"))
            for _ in range(3)
        ]
    finally:
        torch.set_num_threads(prev)
    first = runs[0].reconstructed_object.tobytes()
    assert all(r.reconstructed_object.tobytes() == first for r in runs[1:])
    assert not torch.are_deterministic_algorithms_enabled()  # the switch is scoped to pty-chi
