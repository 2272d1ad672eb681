"""compare: perfect scores for the truth, correct ranking, outputs, failures, bad input."""

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ptychobench.cli import app
from ptychobench.data.io import save
from ptychobench.data.recon import Reconstruction, read_reconstruction, write_reconstruction
from ptychobench.evaluate.compare import CompareSettings, compare, default_crop_size
from ptychobench.simulate import SimulationConfig, simulate

runner = CliRunner()


@pytest.fixture(scope="module")
def ds():
    return simulate(
        SimulationConfig(
            N=32,
            object="image:camera+astronaut",
            object_size=128,
            scan="raster",
            step_px=5.0,
            noise="none",
            seed=4,
        )
    )


def arm(img, seconds=1.0):
    return Reconstruction(
        np.asarray(img, np.complex64),
        np.ones(img.shape, np.float32),
        {"seconds": seconds, "n_patterns": 7},
    )


def noisy(truth, sigma, seed):
    rng = np.random.default_rng(seed)
    return truth + sigma * (rng.normal(size=truth.shape) + 1j * rng.normal(size=truth.shape))


def test_default_crop_size():
    assert default_crop_size(64) == 16 and default_crop_size(128) == 32
    assert default_crop_size(32) == 8


def test_truth_as_an_arm_scores_perfectly(ds, tmp_path):
    res = compare(ds, {"Truth": arm(ds.objectGuess)}, tmp_path)
    m = res.metrics["Truth"]
    assert m["mae"][0] < 1e-6 and m["mae"][1] < 1e-6
    assert m["ssim"][0] > 0.9999 and m["ssim"][1] > 0.9999
    assert m["ms_ssim"][0] > 0.9999 and m["ms_ssim"][1] > 0.9999
    assert m["nrmse"] < 1e-6
    assert m["frc50"] == (0.5, 0.5)
    assert m["psnr"][1] >= 99.0
    assert abs(m["registration_offset_dy"]) < 1e-6 and abs(m["registration_offset_dx"]) < 1e-6
    assert "Flat" in res.metrics and res.metrics["Flat"]["ssim"][1] < 0.5
    assert res.ok


def test_two_arms_are_ranked_correctly_on_every_metric(ds, tmp_path):
    t = ds.objectGuess
    res = compare(ds, {"Good": arm(noisy(t, 0.02, 1)), "Bad": arm(noisy(t, 0.15, 2))}, tmp_path)
    good, bad = res.metrics["Good"], res.metrics["Bad"]
    for metric in ("mae", "mse"):
        assert good[metric][0] < bad[metric][0] and good[metric][1] < bad[metric][1], metric
    for metric in ("psnr", "psnr255", "ssim", "ms_ssim", "pearson"):
        assert good[metric][0] > bad[metric][0] and good[metric][1] > bad[metric][1], metric
    for metric in ("frc50", "frc1over7", "frc_halfbit"):
        assert good[metric][0] >= bad[metric][0] and good[metric][1] >= bad[metric][1], metric
    assert good["nrmse"] < bad["nrmse"]


def test_output_files(ds, tmp_path):
    t = ds.objectGuess
    compare(ds, {"PtyChi": arm(noisy(t, 0.05, 3), seconds=12.5)}, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "comparison_metrics.csv")))
    assert list(rows[0]) == ["model", "metric", "amplitude", "phase", "value"]
    models = {r["model"] for r in rows}
    assert models == {"PtyChi", "Flat"}
    by = {(r["model"], r["metric"]): r for r in rows}
    assert float(by[("PtyChi", "computation_time_s")]["value"]) == 12.5
    assert float(by[("PtyChi", "n_patterns")]["value"]) == 7
    assert by[("PtyChi", "ssim")]["amplitude"] and by[("PtyChi", "ssim")]["value"] == ""
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert set(doc["models"]) == {"PtyChi", "Flat"}
    assert doc["models"]["PtyChi"]["ssim"]["phase"] == pytest.approx(
        float(by[("PtyChi", "ssim")]["phase"])
    )
    frc_rows = list(csv.DictReader(open(tmp_path / "frc_curves.csv")))
    assert list(frc_rows[0]) == ["model", "frequency", "amplitude_frc", "phase_frc"]
    assert {r["model"] for r in frc_rows} == {"PtyChi", "Flat"}
    with np.load(tmp_path / "reconstructions.npz", allow_pickle=False) as f:
        assert {"PtyChi_raw", "PtyChi_aligned", "Flat_aligned", "truth_crop"} <= set(f.files)
        assert f["PtyChi_raw"].shape == t.shape
        assert f["PtyChi_aligned"].shape == f["truth_crop"].shape
    assert (tmp_path / "comparison_plot.png").read_bytes()[:4] == b"\x89PNG"


def test_no_floor(ds, tmp_path):
    res = compare(ds, {"A": arm(ds.objectGuess)}, tmp_path, CompareSettings(floor=False))
    assert set(res.metrics) == {"A"}


def test_failed_arm_keeps_empty_rows_and_an_error_row(ds, tmp_path):
    res = compare(
        ds,
        {"PtyChi": arm(np.zeros_like(ds.objectGuess)), "Baseline": arm(ds.objectGuess)},
        tmp_path,
    )
    assert not res.ok and "all zeros" in res.errors["PtyChi"]
    rows = list(csv.DictReader(open(tmp_path / "comparison_metrics.csv")))
    mine = [r for r in rows if r["model"] == "PtyChi"]
    assert any(r["metric"] == "error" and "all zeros" in r["value"] for r in mine)
    assert all(r["amplitude"] == "" for r in mine if r["metric"] == "ssim")
    assert "Baseline" in res.metrics


def test_reconstruction_file_round_trip(tmp_path):
    rec = Reconstruction(
        np.ones((5, 6), np.complex64) * 1j,
        np.full((5, 6), 2, np.float32),
        {"arm": "X", "seconds": 1.5},
        np.ones((4, 4), np.complex64),
    )
    write_reconstruction(rec, tmp_path / "r.npz")
    back = read_reconstruction(tmp_path / "r.npz", shape=(5, 6))
    assert np.array_equal(back.reconstructed_object, rec.reconstructed_object)
    assert np.array_equal(back.coverage, rec.coverage) and back.metadata == rec.metadata
    assert np.array_equal(back.reconstructed_probe, rec.reconstructed_probe)


# ---------------------------------------------------------------------------- CLI and bad input
@pytest.fixture(scope="module")
def files(ds, tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    save(ds, d / "d.npz")
    nogt = ds.copy()
    nogt.objectGuess = None
    save(nogt, d / "nogt.npz")
    write_reconstruction(arm(noisy(ds.objectGuess, 0.05, 5)), d / "good.npz")
    np.savez(d / "no_object.npz", coverage=np.ones((3, 3), np.float32))
    np.savez(d / "real.npz", reconstructed_object=np.abs(ds.objectGuess))
    np.savez(d / "shape.npz", reconstructed_object=ds.objectGuess[:-3])
    return d


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_compare_writes_the_bundle(files, tmp_path):
    r = run(
        "compare",
        files / "d.npz",
        "--out-dir",
        tmp_path / "c",
        "--iterative",
        files / "good.npz",
        "--arm",
        f"Other={files / 'good.npz'}",
    )
    assert r.exit_code == 0, r.output
    assert "PtyChi" in r.stdout and "Other" in r.stdout and "Flat" in r.stdout
    assert (tmp_path / "c" / "comparison_metrics.csv").exists()


@pytest.mark.parametrize(
    "name,extra,words",
    [
        ("no_object", [], ["reconstructed_object"]),
        ("real", [], ["reconstructed_object", "complex"]),
        ("shape", [], ["reconstructed_object", "shape"]),
        ("good", ["--stitch-crop-size", "0"], ["crop", "M"]),
        ("good", ["--stitch-crop-size", "33"], ["crop", "33"]),
        ("good", ["--registration", "some"], ["registration"]),
        ("good", ["--phase-align", "cubic"], ["phase_align"]),
    ],
)
def test_cli_bad_input_is_one_clear_line(files, tmp_path, name, extra, words):
    out = tmp_path / "c"
    r = run(
        "compare", files / "d.npz", "--out-dir", out, "--iterative", files / f"{name}.npz", *extra
    )
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert all(w.lower() in lines[0].lower() for w in words), lines[0]
    assert not out.exists()


def test_cli_without_ground_truth_writes_reconstructions_and_says_why(files, tmp_path):
    out = tmp_path / "c"
    r = run("compare", files / "nogt.npz", "--out-dir", out, "--iterative", files / "good.npz")
    assert r.exit_code == 2
    assert "ground truth" in r.stderr and "objectGuess" in r.stderr
    assert (out / "reconstructions.npz").exists() and (out / "comparison_plot.png").exists()
    assert not (out / "comparison_metrics.csv").exists()


def test_cli_failed_arm_exits_nonzero_but_writes_everything(files, tmp_path, ds):
    zero = tmp_path / "zero.npz"
    write_reconstruction(arm(np.zeros_like(ds.objectGuess)), zero)
    out = tmp_path / "c"
    r = run(
        "compare",
        files / "d.npz",
        "--out-dir",
        out,
        "--iterative",
        zero,
        "--baseline",
        files / "good.npz",
    )
    assert r.exit_code == 1
    assert "PtyChi" in r.stderr and "all zeros" in r.stderr
    assert (out / "comparison_metrics.csv").exists() and (out / "metrics.json").exists()


def test_cli_compare_with_bundles_and_baseline_debug_options(ds, tmp_path):
    from ptychobench.fit import fit

    save(ds, tmp_path / "d.npz")
    tc = {"epochs": 1, "batch_size": 8, "val_fraction": 0.0}
    fit(ds, "pinn", tmp_path / "pinn", train_config=tc, n_filters_scale=0.25, progress=False)
    fit(ds, "baseline", tmp_path / "base", train_config=tc, n_filters_scale=0.25, progress=False)
    out, dbg = tmp_path / "c", tmp_path / "dbg"
    r = run(
        "compare",
        tmp_path / "d.npz",
        "--out-dir",
        out,
        "--pinn",
        tmp_path / "pinn",
        "--baseline",
        tmp_path / "base",
        "--baseline-debug-limit",
        "100",
        "--baseline-debug-dir",
        dbg,
    )
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["settings"]["debug_limited"] is True
    assert doc["models"]["Baseline"]["debug_limited"] is True
    assert doc["models"]["Baseline"]["n_patterns"] == 100
    assert doc["models"]["PtychoPINN"]["computation_time_s"] > 0
    stats = json.loads((dbg / "baseline_debug_stats.json").read_text())
    assert stats["input"]["shape"] == [100, 1, 32, 32]
    r = run(
        "compare",
        tmp_path / "d.npz",
        "--out-dir",
        tmp_path / "c2",
        "--baseline",
        tmp_path / "base",
        "--baseline-debug-limit",
        "3",
    )
    assert r.exit_code == 1 and "too small" in r.stderr  # 3 patterns: a sliver, said clearly
    rows = list(csv.DictReader(open(out / "comparison_metrics.csv")))
    assert any(r["model"] == "Baseline" and r["metric"] == "debug_limited" for r in rows)
