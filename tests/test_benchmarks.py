"""The science benchmarks refuse bad arguments in one line (exit 2) before writing anything, and
their likelihood rungs order as the physics says they must."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "script, args, needle",
    [
        ("paper_regime.py", ["--budget-s", "0"], "--budget-s"),
        ("paper_regime.py", ["--budget-s", "-5"], "--budget-s"),
        ("paper_regime.py", ["--budget-s", "nan"], "--budget-s"),
        ("paper_regime.py", ["--arms", "pinn_gs3"], "--arms"),
        ("pinn_ladder.py", ["--rungs", "base,bogus"], "--rungs"),
        ("pinn_ladder.py", ["--views", "medium"], "--views"),
        ("pinn_ladder.py", ["--epochs", "0"], "--epochs"),
    ],
)
def test_bad_arguments_one_line_exit_2_nothing_written(tmp_path, script, args, needle):
    out = tmp_path / "out"
    res = _run(script, *args, "--out", str(out), cwd=tmp_path)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in res.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_likelihood_rungs_oracle_beats_flat_and_an_untrained_model():
    """On noiseless-ish data the true patches explain the counts better than a flat object."""
    sys.path.insert(0, str(BENCH))
    try:
        from _harness import likelihood_rungs
    finally:
        sys.path.pop(0)
    from ptychobench.fit import model_config_for
    from ptychobench.models import build_model
    from ptychobench.simulate import SimulationConfig, simulate

    ds = simulate(
        SimulationConfig(
            N=32,
            object="lines:coupled",
            object_size=64,
            probe="disk",
            scan="raster",
            step_px=4.0,
            dose=1e6,
            seed=0,
        )
    )
    cfg = model_config_for("pinn", ds, 1, n_filters_scale=0.25)
    torch.manual_seed(0)
    net = build_model(cfg, torch.from_numpy(ds.probeGuess))
    r = likelihood_rungs(net, ds, 1, 4, max_groups=64)
    assert r["nll_oracle"] < r["nll_flat"]
    # an untrained network (sigmoid/tanh around their midpoints) is no better than flat
    assert r["nll_model"] > r["nll_oracle"]
    assert r["gap_covered"] == pytest.approx(
        (r["nll_flat"] - r["nll_model"]) / (r["nll_flat"] - r["nll_oracle"])
    )
    assert np.isfinite(r["scale_learned_over_true"])


def _json_lines(text: str) -> list[dict]:
    import json

    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_gpu_suite_without_cuda_prints_every_row_unmeasured(tmp_path):
    res = _run("gpu_suite.py", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = _json_lines(res.stdout)
    assert [r["bench"] for r in rows] == [
        "gpu_env", "kernel_infer", "kernel_train", "infer_path", "lsqml", "study_fly64"
    ]
    assert all(r["status"] == "unmeasured" and "CUDA" in r["reason"] for r in rows)
    assert not any("patterns_per_s" in r for r in rows)  # never estimated


def test_gpu_suite_smoke_on_cpu_measures_every_kernel_and_lsqml(tmp_path):
    """The suite's own code runs (toy sizes, CPU): a row per kind × dtype × mode, rates > 0,
    LSQML seconds/epoch > 0 and the PINN/LSQML ratio computed from them."""
    res = _run("gpu_suite.py", "--device", "cpu", "--smoke", "--what", "kernels,lsqml",
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = _json_lines(res.stdout)
    kern = [r for r in rows if r["bench"].startswith("kernel_")]
    cases = {(r["bench"], r["kind"], r["gridsize"], r["dtype"]) for r in kern}
    assert len(kern) == len(cases) == 2 * 3 * 2
    assert all(r["status"] == "ok" and r["patterns_per_s"] > 0 for r in kern)
    (lsq,) = [r for r in rows if r["bench"] == "lsqml"]
    assert lsq["seconds_per_epoch"] > 0
    pinn = max(r["patterns_per_s"] for r in kern if r["bench"] == "kernel_infer"
               and r["kind"] == "pinn" and r["gridsize"] == 1 and r["dtype"] == "fp32")
    expected = lsq["lsqml_100_epochs_s"] / (lsq["n_patterns"] / pinn)
    assert lsq["ratio_vs_lsqml100_kernel_infer_fp32"] == pytest.approx(expected, rel=0.01)


def test_reference_free_benchmark_ranks_a_perfectly_agreeing_run_at_rho_one(tmp_path):
    """A run whose held-out NLL falls exactly as phase SSIM rises, and whose half-scan FRC rises
    with FRC50, reads ρ = −1 and +1; the train split and Flat (no reference-free score) are
    ignored."""
    import csv
    import json

    run = tmp_path / "run"
    (run / "analysis").mkdir(parents=True)
    rows = []
    arms = ("PtychoPINN", "Baseline", "PtyChi")
    for d, dose in enumerate((1e3, 1e5)):
        for a, arm in enumerate(arms):
            q = 0.2 * a + 0.1 * d  # quality
            for split in ("train", "test"):
                rows += [
                    [dose, "dense", split, 0, arm, "ssim", 0.5, q, ""],
                    [dose, "dense", split, 0, arm, "nrmse", "", "", 1 - q],
                    [dose, "dense", split, 0, arm, "frc50", 0.1, 0.05 + q / 4, ""],
                    [dose, "dense", split, 0, arm, "heldout_nll_rel", "", "", 2 - q],
                    [dose, "dense", split, 0, arm, "halfscan_frc_halfbit", 0.2, q / 3, ""],
                    [dose, "dense", split, 0, arm, "halfscan_frc1over7", 0.2, q / 2, ""],
                ]
        rows.append([dose, "dense", "test", 0, "Flat", "ssim", 0.4, 0.9, ""])
    with (run / "analysis" / "metrics_long.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dose", "view", "split", "repeat", "model", "metric", "amplitude", "phase",
                    "value"])
        w.writerows(rows)
    res = _run("reference_free.py", str(run), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["spearman_rho"] for r in out] == [-1.0, 1.0, 1.0, 1.0]
    assert all(r["n"] == 6 and r["agrees"] and r["abs_rho_ge_0_7"] for r in out)
    assert out[0]["arms"] == sorted(arms)
