"""CLI: happy paths, determinism, and one clear error (no partial output) for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ptychobench.cli import app

runner = CliRunner()

SMALL = [
    "--n",
    "32",
    "--object-size",
    "96",
    "--object",
    "grf",
    "--scan",
    "raster",
    "--step-px",
    "8",
]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def base_arrays(n=6, N=16, H=40, W=40, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "diffraction": rng.random((n, N, N)).astype(np.float32),
        "probeGuess": (rng.random((N, N)) + 1j * rng.random((N, N))).astype(np.complex64),
        "xcoords": rng.uniform(N / 2, W - N / 2, n),
        "ycoords": rng.uniform(N / 2, H - N / 2, n),
        "objectGuess": np.exp(1j * rng.random((H, W))).astype(np.complex64),
        "metadata": np.array(json.dumps({"schema_version": 1})),
    }


def write_raw(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


def dir_listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "d.npz"
    r = invoke("simulate", "--out", out, *SMALL, "--dose", "1000", "--seed", "3")
    assert r.exit_code == 0, r.output
    return out


def test_simulate_is_byte_identical_and_seed_changes_noise(tmp_path):
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    for path, noise_seed in ((a, "1"), (b, "1"), (c, "2")):
        r = invoke("simulate", "--out", path, *SMALL, "--seed", "5", "--noise-seed", noise_seed)
        assert r.exit_code == 0, r.output
    assert a.read_bytes() == b.read_bytes()
    with np.load(a, allow_pickle=False) as fa, np.load(c, allow_pickle=False) as fc:
        assert np.array_equal(fa["objectGuess"], fc["objectGuess"])  # same object and scan
        assert np.array_equal(fa["xcoords"], fc["xcoords"])
        assert not np.array_equal(fa["diffraction"], fc["diffraction"])  # different noise


def test_inspect_json_reports_realised_photons(small_dataset, tmp_path):
    png = tmp_path / "fig.png"
    r = invoke("inspect", small_dataset, "--json", "--png", png)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["dose"] == 1000
    assert abs(s["realised_mean_photons"] / 1000 - 1) < 0.03
    assert s["N"] == 32 and s["n"] > 10
    assert 0 < s["overlap"]["metric_2_neighbors"] <= 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_split_then_view_and_convert(small_dataset, tmp_path):
    r = invoke("split", small_dataset, "--out-dir", tmp_path / "s")
    assert r.exit_code == 0, r.output
    train, test = tmp_path / "s" / "d_train.npz", tmp_path / "s" / "d_test.npz"
    with np.load(small_dataset) as f, np.load(train) as ft, np.load(test) as fs:
        assert len(ft["xcoords"]) + len(fs["xcoords"]) == len(f["xcoords"])
        assert ft["ycoords"].max() < fs["ycoords"].min()
    v = tmp_path / "v.npz"
    r = invoke("view", train, "--out", v, "--gridsize", "2", "--neighbor-count", "6")
    assert r.exit_code == 0, r.output
    with np.load(v) as fv:
        assert fv["groups"].shape[1] == 4
    ov = json.loads((tmp_path / "v.npz.overlap.json").read_text())
    assert ov["gridsize"] == 2 and ov["metric_1_group"] is not None
    cxi = tmp_path / "v.cxi"
    assert invoke("convert", v, cxi).exit_code == 0
    back = tmp_path / "back.npz"
    assert invoke("convert", cxi, back).exit_code == 0
    with np.load(v) as f1, np.load(back) as f2:
        for key in (
            "diffraction",
            "probeGuess",
            "xcoords",
            "ycoords",
            "objectGuess",
            "Y",
            "groups",
        ):
            assert np.array_equal(f1[key], f2[key]) and f1[key].dtype == f2[key].dtype


def _bad_files():
    """(name, mutate(arrays) -> arrays or bytes, expected words in the message)."""

    def drop(key):
        return lambda a: {k: v for k, v in a.items() if k != key}

    def setkey(key, fn):
        return lambda a: {**a, key: fn(a)}

    return [
        ("missing_diffraction", drop("diffraction"), ["diffraction"]),
        (
            "complex_diffraction",
            setkey("diffraction", lambda a: a["diffraction"].astype(np.complex64)),
            ["diffraction", "complex"],
        ),
        (
            "negative_diffraction",
            setkey("diffraction", lambda a: a["diffraction"] - 2),
            ["diffraction", "negative"],
        ),
        (
            "nan_diffraction",
            setkey(
                "diffraction",
                lambda a: np.where(
                    np.arange(a["diffraction"].size).reshape(a["diffraction"].shape) == 7,
                    np.nan,
                    a["diffraction"],
                ).astype(np.float32),
            ),
            ["diffraction"],
        ),
        (
            "integer_counts",
            setkey("diffraction", lambda a: (a["diffraction"] * 100).astype(np.uint16)),
            ["diffraction", "--counts"],
        ),
        ("wrong_rank", setkey("diffraction", lambda a: a["diffraction"][0]), ["diffraction"]),
        ("coord_length", setkey("xcoords", lambda a: a["xcoords"][:-1]), ["xcoords"]),
        (
            "coords_not_float",
            setkey("ycoords", lambda a: a["ycoords"].astype(np.int64)),
            ["ycoords"],
        ),
        (
            "probe_size",
            setkey("probeGuess", lambda a: np.ones((8, 8), np.complex64)),
            ["probeGuess"],
        ),
        ("probe_real", setkey("probeGuess", lambda a: np.abs(a["probeGuess"])), ["probeGuess"]),
        ("object_real", setkey("objectGuess", lambda a: np.abs(a["objectGuess"])), ["objectGuess"]),
        ("outside_object", setkey("xcoords", lambda a: a["xcoords"] + 100), ["xcoords"]),
        (
            "pickled_metadata",
            setkey("metadata", lambda a: np.array([{"a": 1}], dtype=object)),
            ["pickle"],
        ),
    ]


@pytest.mark.parametrize("name,mutate,words", _bad_files(), ids=[b[0] for b in _bad_files()])
@pytest.mark.parametrize("command", ["inspect", "split", "convert"])
def test_bad_file_gives_one_clear_error_and_no_output(tmp_path, name, mutate, words, command):
    src = write_raw(tmp_path / "bad.npz", mutate(base_arrays()))
    out = tmp_path / "out"
    out.mkdir()
    args = {
        "inspect": ("inspect", src, "--png", out / "x.png"),
        "split": ("split", src, "--out-dir", out),
        "convert": ("convert", src, out / "x.cxi"),
    }[command]
    r = invoke(*args)
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    assert "bad.npz" in lines[0]
    assert dir_listing(out) == []


def test_probe_less_file_inspects_and_reconstruct_asks_for_probe(tmp_path):
    arrays = base_arrays()
    probe = arrays.pop("probeGuess")
    src = write_raw(tmp_path / "noprobe.npz", arrays)
    r = invoke("inspect", src, "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["has_probe"] is False and summary["probe_fwhm_px"] is None
    assert "no probe" in summary["overlap"]
    out = tmp_path / "out"
    out.mkdir()
    for args in (
        ("reconstruct", src, "--out", out / "r.npz", "--epochs", "1"),
        ("train", src, "--model", "pinn", "--out", out / "m", "--epochs", "1"),
    ):
        r = invoke(*args)
        assert r.exit_code == 2
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "noprobe.npz" in lines[0] and "--probe FILE" in lines[0], lines
        assert dir_listing(out) == []
    # the probe supplied on the command line is the one used
    np.savez(tmp_path / "p.npz", probeGuess=probe)
    r = invoke("inspect", src, "--json", "--probe", tmp_path / "p.npz")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["has_probe"] is True


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", "truncated"])
def test_corrupt_file(tmp_path, content):
    src = tmp_path / "bad.npz"
    if content == "truncated":
        write_raw(src, base_arrays())
        src.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    else:
        src.write_bytes(content)
    r = invoke("inspect", src)
    assert r.exit_code == 2 and "bad.npz" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_really_pickled_file_is_never_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    src = tmp_path / "evil.npz"
    arrays = base_arrays()
    arrays["metadata"] = np.array([Boom()], dtype=object)
    np.savez(src, **arrays)
    assert b"pwned" in src.read_bytes()  # the payload really is in the file
    r = invoke("inspect", src)
    assert r.exit_code == 2 and "pickle" in r.stderr
    assert not (tmp_path / "pwned").exists()


SIM_ERRORS = [
    (["--object", "bogus"], ["unknown object", "bogus"]),
    (["--object", "image:camera+nonexistent"], ["nonexistent"]),
    (["--probe", "laser"], ["unknown probe", "laser"]),
    (["--dose", "-5"], ["dose"]),
    (["--dose", "nan"], ["dose"]),
    (["--step-px", "5", "--overlap", "0.5"], ["step_px", "overlap"]),
    (["--scan", "spiral"], ["scan", "spiral"]),
    (["--overlap", "1.5"], ["overlap"]),
    (["--object-size", "20"], ["20"]),
    (["--n", "0"], ["N"]),
    (["--object", "missing_file.npz"], ["missing_file.npz"]),
    (["--probe", "missing_probe.npz"], ["missing_probe.npz"]),
]


@pytest.mark.parametrize("extra,words", SIM_ERRORS, ids=[" ".join(e[0]) for e in SIM_ERRORS])
def test_simulate_bad_arguments(tmp_path, extra, words):
    out = tmp_path / "d.npz"
    r = invoke(
        "simulate", "--out", out, "--n", "32", "--object-size", "96", "--object", "grf", *extra
    )
    assert r.exit_code != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    assert dir_listing(tmp_path) == []


def test_simulate_unknown_object_variant(tmp_path):
    out = tmp_path / "X.npz"
    args = [a if a != "grf" else "lines:bogus" for a in SMALL]
    r = invoke("simulate", "--out", out, *args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "lines:bogus" in lines[0] and "lines:coupled" in lines[0], lines[0]
    assert "Traceback" not in r.output
    assert not out.exists()
    assert dir_listing(tmp_path) == []


def test_simulate_bad_extension(tmp_path):
    r = invoke("simulate", "--out", tmp_path / "d.txt", *SMALL)
    assert r.exit_code == 2 and ".npz" in r.stderr and dir_listing(tmp_path) == []


VIEW_ERRORS = [
    (["--gridsize", "2", "--neighbor-count", "3"], ["neighbor_count", "3"]),
    (["--gridsize", "3"], ["gridsize", "3"]),
    (["--gridsize", "1", "--s-img", "1.5"], ["s_img", "1.5"]),
    (["--gridsize", "1", "--s-img", "0"], ["s_img"]),
    (["--gridsize", "1", "--n-groups", "100000"], ["n_groups"]),
]


@pytest.mark.parametrize("extra,words", VIEW_ERRORS, ids=[" ".join(e[0]) for e in VIEW_ERRORS])
def test_view_bad_arguments(small_dataset, tmp_path, extra, words):
    out = tmp_path / "v.npz"
    r = invoke("view", small_dataset, "--out", out, *extra)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    assert dir_listing(tmp_path) == []


@pytest.mark.parametrize(
    "extra,words", [(["--fraction", "1.5"], ["fraction"]), (["--axis", "z"], ["axis", "z"])]
)
def test_split_bad_arguments(small_dataset, tmp_path, extra, words):
    r = invoke("split", small_dataset, "--out-dir", tmp_path / "s", *extra)
    assert r.exit_code == 2
    assert all(w in r.stderr for w in words), r.stderr
    assert not (tmp_path / "s").exists() or dir_listing(tmp_path / "s") == []


def test_debug_shows_traceback(tmp_path):
    r = invoke("--debug", "inspect", tmp_path / "nope.npz")
    assert r.exit_code != 0 and r.exception is not None


def test_console_script_help_shows_defaults_and_example():
    exe = Path(sys.executable).with_name("ptychobench")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ptychobench.cli"]
    for sub in ("simulate", "inspect", "split", "view", "convert"):
        r = subprocess.run([*cmd, sub, "--help"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0
        assert "Example: ptychobench " + sub in " ".join(r.stdout.split())
    r = subprocess.run([*cmd, "simulate", "--help"], capture_output=True, text=True, timeout=120)
    assert "default: 64" in r.stdout


def test_view_is_all_or_nothing_when_the_second_output_fails(small_dataset, tmp_path, monkeypatch):
    import ptychobench.data.overlap as overlap

    def boom(report, path):
        raise OSError(f"{path}: disk full (test)")

    monkeypatch.setattr(overlap, "write_overlap_json", boom)
    r = invoke("view", small_dataset, "--out", tmp_path / "v.npz", "--gridsize", "1")
    assert r.exit_code == 2 and "disk full" in r.stderr
    assert dir_listing(tmp_path) == []


# ------------------------------------------------------------------------ stitch / merge weighting


@pytest.fixture(scope="module")
def tiny_bundle(small_dataset, tmp_path_factory) -> Path:
    """An untrained gs1 PINN bundle for small_dataset (N=32): enough to run inference."""
    import torch

    from ptychobench.data.io import load
    from ptychobench.fit import model_config_for
    from ptychobench.infer import data_statistics
    from ptychobench.models import build_model
    from ptychobench.models.bundle import save_bundle

    ds = load(small_dataset)
    torch.manual_seed(0)
    net = build_model(
        model_config_for("pinn", ds, 1, n_filters_scale=0.25), torch.from_numpy(ds.probeGuess)
    )
    hist = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "lr": 1e-3, "seconds": 0.1}]
    out = tmp_path_factory.mktemp("bundle") / "m"
    return save_bundle(net, out, history=hist, training={"seed": 0}, data=data_statistics(ds))


@pytest.mark.parametrize("command", ["infer", "compare", "train"])
def test_unknown_weighting_is_one_line_exit_2_and_writes_nothing(
    small_dataset, tiny_bundle, tmp_path, command
):
    out = tmp_path / "out"
    if command == "infer":
        args = ["infer", tiny_bundle, small_dataset, "--out", out / "r.npz"]
        option = "--stitch-weighting"
    elif command == "compare":
        args = ["compare", small_dataset, "--out-dir", out, "--pinn", tiny_bundle]
        option = "--stitch-weighting"
    else:
        args = ["train", small_dataset, "--model", "pinn", "--out", out, "--epochs", "1"]
        option = "--merge-weighting"
    r = invoke(*args, option, "bogus")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0] == f"error: {option}: expected 'flat' or 'probe', found 'bogus'"
    assert not out.exists()


def test_infer_probe_weighting_records_it_in_the_reconstruction(
    small_dataset, tiny_bundle, tmp_path
):
    from ptychobench.data.recon import read_reconstruction

    out = tmp_path / "r.npz"
    r = invoke("infer", tiny_bundle, small_dataset, "--out", out, "--stitch-weighting", "probe")
    assert r.exit_code == 0, r.output
    rec = read_reconstruction(out)
    assert rec.metadata["stitch_weighting"] == "probe"
    assert np.isfinite(rec.reconstructed_object).all() and np.any(rec.reconstructed_object)


def test_compare_runs_bundles_with_the_stitch_weighting(small_dataset, tiny_bundle, tmp_path):
    out = tmp_path / "cmp"
    args = ["--out-dir", out, "--pinn", tiny_bundle, "--stitch-weighting", "probe", "--no-floor"]
    r = invoke("compare", small_dataset, *args)
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["settings"]["stitch_weighting"] == "probe"


@pytest.mark.parametrize(
    "option, value", [("--min-delta", "-0.5"), ("--min-epochs", "-1"), ("--patience", "-2")]
)
def test_train_bad_stopping_settings_one_line_exit_2(small_dataset, tmp_path, option, value):
    out = tmp_path / "m"
    r = invoke("train", small_dataset, "--model", "pinn", "--out", out, option, value)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid settings: ")
    assert (
        option.lstrip("-").replace("-", "_").replace("patience", "early_stopping_patience")
        in (lines[0])
    )
    assert not out.exists()


def test_train_stops_on_the_plateau_criterion_and_says_why(small_dataset, tmp_path):
    out = tmp_path / "m"
    # min_delta 0.9: no epoch after the first improves by 90 %, so patience 1 ends the run at
    # min_epochs = 3 of at most 20
    r = invoke(
        "train",
        small_dataset,
        "--model",
        "pinn",
        "--out",
        out,
        "--epochs",
        "20",
        "--n-filters-scale",
        "0.125",
        "--patience",
        "1",
        "--min-epochs",
        "3",
        "--min-delta",
        "0.9",
        "--val-fraction",
        "0.2",
    )
    assert r.exit_code == 0, r.output
    assert "3 epochs (plateau)" in r.stdout
    extra = json.loads((out / "config.json").read_text())["extra"]
    assert extra["stop_reason"] == "plateau" and extra["epochs_completed"] == 3


@pytest.mark.parametrize("command", ["infer", "compare"])
def test_negative_phase_sync_is_one_line_exit_2_and_writes_nothing(
    small_dataset, tiny_bundle, tmp_path, command
):
    out = tmp_path / "out"
    if command == "infer":
        args = ["infer", tiny_bundle, small_dataset, "--out", out / "r.npz"]
    else:
        args = ["compare", small_dataset, "--out-dir", out, "--pinn", tiny_bundle]
    r = invoke(*args, "--phase-sync", "-3")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert lines == ["error: --phase-sync: expected iterations >= 0 (0 = off), found -3"]
    assert not out.exists()


def test_phase_sync_is_recorded_by_infer_and_compare(small_dataset, tiny_bundle, tmp_path):
    from ptychobench.data.recon import read_reconstruction

    r = invoke(
        "infer", tiny_bundle, small_dataset, "--out", tmp_path / "r.npz", "--phase-sync", "5"
    )
    assert r.exit_code == 0, r.output
    assert read_reconstruction(tmp_path / "r.npz").metadata["phase_sync"] == 5
    out = tmp_path / "cmp"
    r = invoke(
        "compare", small_dataset, "--out-dir", out, "--pinn", tiny_bundle, "--phase-sync", "5"
    )
    assert r.exit_code == 0, r.output
    assert json.loads((out / "metrics.json").read_text())["settings"]["phase_sync"] == 5


def test_refine_writes_a_ttr_reconstruction_and_refuses_bad_settings(
    small_dataset, tiny_bundle, tmp_path
):
    from ptychobench.data.recon import read_reconstruction

    out = tmp_path / "ttr.npz"
    r = invoke(
        "refine", tiny_bundle, small_dataset, "--out", out, "--epochs", "1", "--device", "cpu"
    )
    assert r.exit_code == 0, r.output
    assert "scan loss" in r.stdout
    rec = read_reconstruction(out)
    assert rec.metadata["arm"] == "PtychoPINN+TTR" and rec.metadata["epochs"] == 1
    for option, value in (("--epochs", "-1"), ("--phase-sync", "-1"), ("--lr", "-1")):
        bad = tmp_path / f"bad{option}.npz"
        r = invoke("refine", tiny_bundle, small_dataset, "--out", bad, option, value)
        assert r.exit_code == 2, (option, r.output)
        assert len(r.stderr.strip().splitlines()) == 1 and not bad.exists()
