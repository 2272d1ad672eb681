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


# ---------------------------------------------------------------- start object (PtychoPINN+LSQML)


def _phase_ssim(ds, rec, tmp):
    return compare(ds, {"PtyChi": rec}, tmp).metrics["PtyChi"]["ssim"][1]


def test_start_from_the_truth_converges_in_few_epochs_to_at_least_the_flat_result(tmp_path):
    """Diagnostic (the truth as a 'reconstruction', never a study arm): 5 epochs from it are at
    least as good as 40 from flat, and the metadata names the start."""
    from ptychobench.data.recon import Reconstruction

    ds = small(step_px=6.0, noise="poisson", dose=1e4)
    cfg = IterativeConfig(epochs=40, device="cpu", progress=False)
    flat = reconstruct(ds, cfg)
    truth = Reconstruction(
        ds.objectGuess.astype(np.complex64),
        np.ones(ds.objectGuess.shape, np.float32),
        {"arm": "truth (diagnostic)"},
    )
    warm = reconstruct(ds, cfg.model_copy(update={"epochs": 5}), init_object=truth)
    assert warm.metadata["init"] == "object of truth (diagnostic)"
    assert flat.metadata["init"] == "flat"
    s_flat, s_warm = _phase_ssim(ds, flat, tmp_path / "a"), _phase_ssim(ds, warm, tmp_path / "b")
    assert s_warm >= s_flat, (s_warm, s_flat)


def test_uncovered_start_pixels_take_the_flat_value():
    from ptychobench.iterative import initial_object

    obj = np.full((8, 8), 2 + 1j, np.complex64)
    obj[0, 0] = np.nan  # uncovered, so it never reaches pty-chi
    cov = np.ones((8, 8), np.float32)
    cov[:2] = 0
    start = initial_object(obj, cov, (8, 8))
    assert np.all(start[:2] == 1) and np.all(start[2:] == 2 + 1j)


@pytest.mark.parametrize(
    "edit,word",
    [
        (lambda o, c: (o[:-1], c[:-1]), "shape"),
        (lambda o, c: (np.where(c > 0, np.nan, o).astype(np.complex64), c), "non-finite"),
        (lambda o, c: (o, np.zeros_like(c)), "covered"),
        (lambda o, c: (o.real.copy(), c), "complex"),
    ],
)
def test_cli_bad_init_object_is_one_line_exit_2_nothing_written(tmp_path, edit, word):
    from ptychobench.data.recon import Reconstruction, write_reconstruction

    ds = small(step_px=8.0)
    save(ds, tmp_path / "d.npz")
    obj = np.ones(ds.objectGuess.shape, np.complex64)
    cov = np.ones(ds.objectGuess.shape, np.float32)
    obj, cov = edit(obj, cov)
    # write the bad file by hand: write_reconstruction refuses some of them itself
    try:
        write_reconstruction(Reconstruction(obj, cov, {"arm": "PtychoPINN"}), tmp_path / "i.npz")
    except ValueError:
        np.savez(tmp_path / "i.npz", reconstructed_object=obj, coverage=cov)
    r = CliRunner().invoke(
        app,
        [
            "reconstruct",
            str(tmp_path / "d.npz"),
            "--out",
            str(tmp_path / "x.npz"),
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--init-object",
            str(tmp_path / "i.npz"),
        ],
    )
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and word in lines[0], r.stderr
    assert not (tmp_path / "x.npz").exists()


def test_cli_init_object_runs_and_records_its_start(tmp_path):
    ds = small(step_px=8.0, noise="poisson", dose=1e4)
    save(ds, tmp_path / "d.npz")
    runner = CliRunner()
    base = ["reconstruct", str(tmp_path / "d.npz"), "--epochs", "2", "--device", "cpu"]
    assert runner.invoke(app, [*base, "--out", str(tmp_path / "a.npz")]).exit_code == 0
    r = runner.invoke(
        app, [*base, "--out", str(tmp_path / "b.npz"), "--init-object", str(tmp_path / "a.npz")]
    )
    assert r.exit_code == 0, r.output
    assert "start: object of PtyChi" in r.stdout
    b = read_reconstruction(tmp_path / "b.npz", ds.objectGuess.shape)
    assert b.metadata["init"] == "object of PtyChi"
    # 2 + 2 epochs through the file equal 4 epochs in one go only up to the float32 round trip
    # of the object; the start must at least have moved the result off the 2-epoch one
    a = read_reconstruction(tmp_path / "a.npz", ds.objectGuess.shape)
    assert not np.allclose(a.reconstructed_object, b.reconstructed_object)


def test_snapshots_do_not_change_the_result_and_their_seconds_rise():
    ds = small(step_px=8.0, noise="poisson", dose=1e4)
    cfg = IterativeConfig(epochs=6, device="cpu", progress=False)
    plain = reconstruct(ds, cfg)
    seen = []
    snap = reconstruct(
        ds, cfg, snapshot_epochs=(2, 4, 6), on_snapshot=lambda e, s, o: seen.append((e, s, o))
    )
    assert np.array_equal(plain.reconstructed_object, snap.reconstructed_object)
    assert [e for e, _, _ in seen] == [2, 4, 6]
    secs = [s for _, s, _ in seen]
    assert all(b > a > 0 for a, b in zip(secs, secs[1:], strict=False))
    assert np.array_equal(seen[-1][2], snap.reconstructed_object)
    with pytest.raises(ValueError, match="snapshot_epochs"):
        reconstruct(ds, cfg, snapshot_epochs=(7,))
