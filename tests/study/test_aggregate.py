"""study.aggregate: parsing, test-split aggregates, deltas, highlights, determinism.

Also home of :func:`make_run`, the tiny fake run directory shared with ``test_verify.py``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ptychobench.evaluate.compare import METRICS, SCALAR_ROWS, TUPLE_METRICS
from ptychobench.study.aggregate import (
    aggregate,
    collect_rows,
    compare_dir,
    compare_jobs_from_manifest,
    deltas,
    highlights_lines,
    summarise,
    verdicts,
)

DOSES = (1000.0, 100000.0)
VIEWS = ("dense",)
SPLITS = ("train", "test")
ARMS = ("PtychoPINN", "Baseline", "PtyChi", "Flat")

# Hand-picked test-split values, [dose_1000, dose_100000], as (amplitude, phase). The aggregate
# numbers asserted below are computed by hand from these.
TEST_VALUES = {
    "PtychoPINN": {
        "ms_ssim": [(0.80, 0.91), (0.84, 0.93)],  # means 0.82, 0.92
        "mae": [(0.010, 0.0001), (0.020, 0.0002)],  # means 0.015, 0.00015
        "ssim": [(0.70, 0.2461234), (0.74, 0.30)],
    },
    "Baseline": {
        "ms_ssim": [(0.80, 0.90), (0.82, 0.91)],  # means 0.81, 0.905
        "mae": [(0.020, 0.0002), (0.030, 0.0002)],  # means 0.025, 0.0002
        "ssim": [(0.60, 0.20), (0.66, 0.24)],
    },
    "PtyChi": {
        "ms_ssim": [(0.81, 0.905), (0.82, 0.919)],  # means 0.815, 0.912
        "mae": [(0.0175, 0.00016), (0.0175, 0.00017)],  # means 0.0175, 0.000165
        "ssim": [(0.65, 0.22), (0.69, 0.26)],
    },
    "Flat": {
        "ms_ssim": [(0.30, 0.0), (0.30, 0.0)],
        "mae": [(0.10, 0.5), (0.10, 0.5)],
        "ssim": [(0.01, -0.01), (0.01, -0.02)],
    },
}
# Train-split scores are deliberately much better: they must not leak into the headline.
TRAIN_BONUS = 0.05


def _value(model: str, metric: str, dose_i: int, split: str) -> tuple[float | None, float | None]:
    if metric in TEST_VALUES[model]:
        a, p = TEST_VALUES[model][metric][dose_i]
    else:
        base = 0.1 * (ARMS.index(model) + 1) + 0.01 * dose_i
        a, p = base, base + 0.001
    if split == "train":
        a, p = a + TRAIN_BONUS, p + TRAIN_BONUS
    if model == "Flat" and metric == "frc50" and dose_i == 1:
        p = None  # an empty cell: must be skipped, not averaged as 0
    return a, p


def write_metrics_csv(
    path: Path, dose_i: int, split: str, seconds: float = 12.5, error_arm: str | None = None
) -> None:
    """A comparison_metrics.csv in compare()'s exact format (tuple rows, scalar rows, error)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["model", "metric", "amplitude", "phase", "value"])
        for model in ARMS:
            failed = model == error_arm
            for metric in TUPLE_METRICS:
                a, p = (None, None) if failed else _value(model, metric, dose_i, split)
                w.writerow(
                    [model, metric, "" if a is None else repr(a), "" if p is None else repr(p), ""]
                )
            for metric in SCALAR_ROWS:
                v = {
                    "nrmse": 0.25,
                    "registration_offset_dy": 0.5,
                    "registration_offset_dx": -0.5,
                    "computation_time_s": seconds,
                    "train_s": 30.0,
                    "infer_s": seconds,
                    "refine_s": 0.0,
                    "n_patterns": 12.0,
                    "heldout_nll_rel": 0.5 + 0.01 * ARMS.index(model),
                }[metric]
                w.writerow([model, metric, "", "", "" if failed else repr(v)])
            if failed:
                w.writerow([model, "error", "", "", f"{model}: reconstruction is all zeros"])


def conditions() -> list[dict]:
    return [{"dose": d, "view": v, "split": s} for d in DOSES for v in VIEWS for s in SPLITS]


def compare_jobs(status: dict[str, str] | None = None) -> list[dict]:
    status = status or {}
    out = []
    for c in conditions():
        jid = f"compare.dose_{int(c['dose'])}.{c['view']}.{c['split']}"
        out.append(
            {"id": jid, "status": status.get(jid, "success"), **c, "error": None, "repeat": 0}
        )
    return out


def _png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (10, 20, 30)).save(path, format="PNG")


def _npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def write_report(run: Path) -> None:
    """A minimal report.html in the agreed cell format (the real one is report.py's)."""
    cells = []
    for r in collect_rows(run, conditions()):
        if r["metric"] not in ("ssim", "ms_ssim"):
            continue
        cond = f"dose_{int(r['dose'])}/{r['view']}/{r['split']}"
        for part in ("amplitude", "phase"):
            v = r[part]
            cells.append(
                f'<td data-condition="{cond}" data-model="{r["model"]}" '
                f'data-metric="{r["metric"]}" data-part="{part}" '
                f'data-value="{"" if v is None else repr(v)}">'
                f"{'n/a' if v is None else f'{v:.3f}'}</td>"
            )
    # the verdict grid's cells (headline metric), as the verifier recomputes them
    for v in verdicts(collect_rows(run, conditions())):
        if (v["metric"], v["part"]) != ("ssim", "phase"):
            continue
        margin = "" if v["margin"] is None else repr(float(v["margin"]))
        cells.append(
            f'<td data-view="{v["view"]}" data-dose="{float(v["dose"])!r}" '
            f'data-metric="ssim" data-part="phase" data-arm="{v["arm"] or ""}" '
            f'data-margin="{margin}">{v["arm"]}</td>'
        )
    rows = "\n".join(f"<tr>{c}</tr>" for c in cells)
    html = (
        f"<!DOCTYPE html><html><head><title>r</title></head><body><table>\n{rows}\n"
        f'</table><img src="dose_response.png"></body></html>\n'
    )
    (run / "analysis" / "report.html").write_text(html, encoding="utf-8")


def make_run(root: Path, *, inventory: bool = True) -> Path:
    """A complete, consistent fake run: 2 doses × 1 view × 2 splits, all jobs successful."""
    run = root / "run"
    run.mkdir()
    (run / "study.toml").write_text('name = "tiny"\ndoses = [1e3, 1e5]\n')
    planned, jobs = [], {}

    def job(jid: str, kind: str, **cond) -> None:
        planned.append(jid)
        jobs[jid] = {
            "kind": kind,
            **cond,
            "deps": [],
            "key": "0" * 16,
            "status": "success",
            "seconds": 0.1,
            "peak_rss_mb": 10.0,
            "log": f"logs/{jid}.log",
            "outputs": {},
            "error": None,
            "finished_at": "2026-11-28T01:00:00Z",
        }
        (run / "logs").mkdir(exist_ok=True)
        (run / "logs" / f"{jid}.log").write_text("ok\n")

    for di, dose in enumerate(DOSES):
        dd = f"dose_{int(dose)}"
        job(f"simulate.{dd}", "simulate", dose=dose)
        job(f"split.{dd}", "split", dose=dose)
        # 10 positions; train = first 6, test = last 4 (disjoint), views take subsets
        x = np.arange(10, dtype=np.float64) + 0.5 * di
        y = 2.0 * np.arange(10, dtype=np.float64)
        _npz(run / "data" / dd / "full.npz", xcoords=x, ycoords=y)
        _npz(run / "data" / dd / "train.npz", xcoords=x[:6], ycoords=y[:6])
        _npz(run / "data" / dd / "test.npz", xcoords=x[6:], ycoords=y[6:])
        for view in VIEWS:
            for split, sl in (("train", slice(0, 6, 2)), ("test", slice(6, 10, 2))):
                job(f"view.{dd}.{view}.{split}", "view", dose=dose, view=view, split=split)
                _npz(run / "data" / dd / view / f"{split}.npz", xcoords=x[sl], ycoords=y[sl])
                (run / "data" / dd / view / f"overlap_{split}.json").write_text('{"overlap": 0.5}')
            for kind, sub in (("train_pinn", "pinn"), ("train_baseline", "baseline")):
                job(f"{kind}.{dd}.{view}", kind, dose=dose, view=view)
                b = run / "models" / dd / view / sub
                b.mkdir(parents=True)
                (b / "model.pt").write_bytes(b"not really torch")
                (b / "config.json").write_text('{"schema_version": 1}')
                (b / "history.csv").write_text(
                    "epoch,train_loss,val_loss,lr,seconds\n0,1.0,,0.1,2\n"
                )
                sums = "".join(
                    f"{hashlib.sha256((b / n).read_bytes()).hexdigest()}  {n}\n"
                    for n in ("model.pt", "config.json", "history.csv")
                )
                (b / "SHA256SUMS").write_text(sums)
            for split in SPLITS:
                job(
                    f"iterative.{dd}.{view}.{split}", "iterative", dose=dose, view=view, split=split
                )
                _npz(
                    run / "iterative" / dd / view / split / "recon.npz",
                    reconstructed_object=np.ones((4, 4), np.complex64),
                )
                jid = f"compare.{dd}.{view}.{split}"
                job(jid, "compare", dose=dose, view=view, split=split)
                cdir = compare_dir(run, dose, view, split)
                write_metrics_csv(cdir / "comparison_metrics.csv", di, split)
                (cdir / "metrics.json").write_text('{"models": {}}')
                (cdir / "frc_curves.csv").write_text("model,frequency,amplitude_frc,phase_frc\n")
                _png(cdir / "comparison_plot.png")
                arrays = {}
                for k, arm in enumerate(ARMS):
                    arrays[f"{arm}_raw"] = np.full((6, 6), 0.5 + k, np.complex64)
                    arrays[f"{arm}_aligned"] = np.full((4, 4), 0.5 + k, np.complex64)
                arrays["truth_crop"] = np.ones((4, 4), np.complex64)
                _npz(cdir / "reconstructions.npz", **arrays)
    for jid in ("aggregate", "report", "verify"):
        job(jid, jid)
    jobs["verify"]["status"] = "pending"  # verify runs while it is being checked
    manifest = {
        "format": "ptychobench-study-manifest/1",
        "planned": planned,
        "conditions": conditions(),
        "jobs": jobs,
        "runs": [],
        "environment": {},
    }
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2))
    aggregate(run, conditions(), compare_jobs_from_manifest(manifest))
    write_report(run)
    _png(run / "analysis" / "dose_response.png")
    # staging leftovers must never be inventoried
    (run / "analysis" / ".staging").mkdir()
    (run / "analysis" / ".staging" / "junk.json").write_text("{not json")
    if inventory:
        from ptychobench.study.verify import write_inventory

        write_inventory(run)
    return run


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path, inventory=False)


def _summary(run: Path) -> dict:
    return json.loads((run / "analysis" / "metrics_summary.json").read_text())


# -------------------------------------------------------------------------------------- tests


def test_compare_dir_uses_int_dose(tmp_path):
    assert compare_dir(tmp_path, 1e3, "dense", "test") == tmp_path / "compare/dose_1000/dense/test"
    assert compare_dir(tmp_path, 1e5, "sparse", "train").parts[-3:] == (
        "dose_100000",
        "sparse",
        "train",
    )


def test_compare_jobs_from_manifest_follows_planned_order(run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    assert compare_jobs_from_manifest(m) == compare_jobs()
    # a manifest merged across runs may hold its records in another order: planned order wins
    m["jobs"] = dict(reversed(list(m["jobs"].items())))
    m["jobs"]["compare.dose_1000.dense.test"]["status"] = "failed"
    jobs = compare_jobs_from_manifest(m)
    assert [j["id"] for j in jobs] == [j["id"] for j in compare_jobs()]
    assert jobs[1]["status"] == "failed" and jobs[1]["dose"] == 1000.0
    m["planned"].remove("compare.dose_100000.dense.train")
    assert len(compare_jobs_from_manifest(m)) == 3


def test_collect_rows_parses_numbers_and_tags_conditions(run_dir):
    rows = collect_rows(run_dir, conditions())
    # 4 conditions × 4 arms × (10 tuple + 5 scalar rows)
    assert len(rows) == 4 * 4 * len(METRICS)
    first = rows[0]
    assert (first["dose"], first["view"], first["split"]) == (1000.0, "dense", "train")
    assert isinstance(first["dose"], float)
    assert set(first) == {
        "dose", "view", "split", "repeat", "model", "metric", "amplitude", "phase", "value"
    }
    assert {r["repeat"] for r in rows} == {0}  # a manifest without repeats: repeat 0
    by = {(r["dose"], r["split"], r["model"], r["metric"]): r for r in rows}
    r = by[(1000.0, "test", "PtychoPINN", "ssim")]
    assert r["phase"] == 0.2461234 and r["amplitude"] == 0.70 and r["value"] is None
    assert by[(100000.0, "test", "Flat", "frc50")]["phase"] is None
    assert by[(1000.0, "test", "PtyChi", "n_patterns")]["value"] == 12.0
    # a condition without a CSV (compare job failed) contributes nothing
    extra = conditions() + [{"dose": 5.0, "view": "dense", "split": "test"}]
    assert len(collect_rows(run_dir, extra)) == len(rows)


def test_summarise_means_and_best_over_test_split_only(run_dir):
    s = summarise(collect_rows(run_dir, conditions()), compare_jobs())
    agg = s["aggregate_metrics"]
    pinn = agg["PtychoPINN"]
    assert s["aggregate_split"] == "test"
    assert s["aggregate_conditions"] == ["dose_1000/dense/test", "dose_100000/dense/test"]
    assert pinn["ms_ssim"]["mean_phase"] == pytest.approx(0.92, abs=1e-15)
    assert pinn["ms_ssim"]["mean_amplitude"] == pytest.approx(0.82, abs=1e-15)
    assert pinn["ms_ssim"]["best_phase"] == 0.93  # higher is better → max
    assert pinn["mae"]["mean_amplitude"] == pytest.approx(0.015, abs=1e-15)
    assert pinn["mae"]["best_amplitude"] == 0.010  # lower is better → min
    assert pinn["mae"]["best_phase"] == 0.0001
    assert agg["Baseline"]["ms_ssim"]["mean_phase"] == pytest.approx(0.905, abs=1e-15)
    assert agg["PtyChi"]["mae"]["mean_phase"] == pytest.approx(0.000165, abs=1e-18)
    assert pinn["ssim"]["n"] == 2
    # the empty Flat frc50 phase cell is skipped, not counted as 0
    flat = agg["Flat"]["frc50"]
    assert flat["n_phase"] == 1 and flat["n_amplitude"] == 2
    assert flat["mean_phase"] == flat["best_phase"] == pytest.approx(0.401)
    # scalar rows are not aggregated; no timing anywhere
    assert "nrmse" not in pinn and "computation_time_s" not in json.dumps(s)
    cond = s["by_condition"]["dose_1000/dense/test"]["PtychoPINN"]
    assert cond["ssim"] == {"amplitude": 0.70, "phase": 0.2461234}
    assert cond["nrmse"] == {"value": 0.25}
    assert set(s["by_condition"]) == {f"dose_{int(d)}/dense/{sp}" for d in DOSES for sp in SPLITS}
    assert (s["n_jobs"], s["n_success"], s["n_failed"], s["n_arm_errors"]) == (4, 4, 0, 0)


def test_summarise_counts_failed_jobs_and_arm_errors(run_dir):
    cdir = compare_dir(run_dir, 1e5, "dense", "test")
    write_metrics_csv(cdir / "comparison_metrics.csv", 1, "test", error_arm="PtyChi")
    jobs = compare_jobs(
        {"compare.dose_1000.dense.train": "failed", "compare.dose_1000.dense.test": "blocked"}
    )
    s = summarise(collect_rows(run_dir, conditions()), jobs)
    assert (s["n_jobs"], s["n_success"], s["n_failed"], s["n_arm_errors"]) == (4, 2, 3, 1)
    assert s["arm_errors"] == [
        {
            "condition": "dose_100000/dense/test",
            "model": "PtyChi",
            "error": "PtyChi: reconstruction is all zeros",
        }
    ]
    assert [j["status"] for j in s["jobs"]] == ["failed", "blocked", "success", "success"]
    # the failed arm's empty cells leave only the other condition in its mean
    pt = s["aggregate_metrics"]["PtyChi"]["ms_ssim"]
    assert pt["n"] == 1 and pt["mean_phase"] == 0.905
    # an error row on a condition whose job already failed is not counted twice
    s2 = summarise(
        collect_rows(run_dir, conditions()),
        compare_jobs({"compare.dose_100000.dense.test": "failed"}),
    )
    assert s2["n_failed"] == 1 and s2["n_arm_errors"] == 1


def test_deltas_signs_and_values(run_dir):
    d = deltas(summarise(collect_rows(run_dir, conditions()), compare_jobs()))
    b, p = d["vs_Baseline"], d["vs_PtyChi"]
    assert b["ms_ssim"]["phase"] == pytest.approx(0.015, abs=1e-12) and b["ms_ssim"]["phase"] > 0
    assert b["ms_ssim"]["amplitude"] == pytest.approx(0.010, abs=1e-12)
    assert b["mae"]["amplitude"] == pytest.approx(-0.010, abs=1e-12) and b["mae"]["amplitude"] < 0
    assert b["mae"]["phase"] == pytest.approx(-0.00005, abs=1e-15)
    assert p["ms_ssim"]["phase"] == pytest.approx(0.008, abs=1e-12)
    assert p["mae"]["phase"] == pytest.approx(-0.000015, abs=1e-15)
    assert d["aggregate_split"] == "test"
    assert d["definition"] == "PtychoPINN mean minus other arm mean over the test-split conditions"


def test_deltas_missing_arm_is_none():
    s = {
        "aggregate_split": "test",
        "aggregate_metrics": {
            "PtychoPINN": {
                "ms_ssim": {"mean_phase": 0.9, "mean_amplitude": 0.8},
                "mae": {"mean_phase": 0.1, "mean_amplitude": None},
            },
            "Baseline": {
                "ms_ssim": {"mean_phase": 0.85, "mean_amplitude": 0.7},
                "mae": {"mean_phase": 0.2, "mean_amplitude": 0.3},
            },
        },
    }
    d = deltas(s)
    assert d["vs_PtyChi"]["ms_ssim"] == {"phase": None, "amplitude": None}
    assert d["vs_Baseline"]["mae"]["amplitude"] is None
    assert d["vs_Baseline"]["mae"]["phase"] == pytest.approx(-0.1)
    lines = highlights_lines(d)
    assert lines[1] == "MAE Δ (PtychoPINN - Baseline)      : phase -0.100000  amplitude n/a"
    assert lines[2] == "MS-SSIM Δ (PtychoPINN - PtyChi)    : phase n/a  amplitude n/a"


def test_highlights_exact_lines():
    d = {
        "vs_Baseline": {
            "ms_ssim": {"phase": 0.920 - 0.905, "amplitude": 0.010},
            "mae": {"phase": -0.000025, "amplitude": -0.005},
        },
        "vs_PtyChi": {
            "ms_ssim": {"phase": 0.008, "amplitude": 0.005},
            "mae": {"phase": -0.000018, "amplitude": -0.0025},
        },
    }
    assert highlights_lines(d) == [
        "MS-SSIM Δ (PtychoPINN - Baseline)  : phase +0.015  amplitude +0.010",
        "MAE Δ (PtychoPINN - Baseline)      : phase -0.000025  amplitude -0.005000",
        "MS-SSIM Δ (PtychoPINN - PtyChi)    : phase +0.008  amplitude +0.005",
        "MAE Δ (PtychoPINN - PtyChi)        : phase -0.000018  amplitude -0.002500",
    ]


def test_aggregate_writes_files_from_the_fixture(run_dir):
    a = run_dir / "analysis"
    assert (a / "highlights.txt").read_text().splitlines() == [
        "MS-SSIM Δ (PtychoPINN - Baseline)  : phase +0.015  amplitude +0.010",
        "MAE Δ (PtychoPINN - Baseline)      : phase -0.000050  amplitude -0.010000",
        "MS-SSIM Δ (PtychoPINN - PtyChi)    : phase +0.008  amplitude +0.005",
        "MAE Δ (PtychoPINN - PtyChi)        : phase -0.000015  amplitude -0.002500",
    ]
    long = list(csv.DictReader(open(a / "metrics_long.csv", newline="")))
    assert list(long[0]) == [
        "dose",
        "view",
        "split",
        "repeat",
        "model",
        "metric",
        "amplitude",
        "phase",
        "value",
    ]
    assert len(long) == 4 * 4 * len(METRICS)
    times = [r for r in long if r["metric"] == "computation_time_s"]
    assert len(times) == 16 and all(float(r["value"]) == 12.5 for r in times)
    hit = [
        r
        for r in long
        if r["dose"] == "1000.0"
        and r["split"] == "test"
        and r["model"] == "PtychoPINN"
        and r["metric"] == "ssim"
    ]
    assert len(hit) == 1 and hit[0]["phase"] == "0.2461234"
    md = (a / "metrics_summary.md").read_text()
    assert "| PtychoPINN |" in md and "dose_1000/dense/test" in md
    assert "0.92" in md  # PINN mean phase ms_ssim
    assert json.loads((a / "deltas.json").read_text())["vs_Baseline"]["ms_ssim"]["phase"] > 0


def test_summary_is_byte_identical_across_runs_and_has_no_timings(run_dir):
    a = run_dir / "analysis"
    first = (a / "metrics_summary.json").read_bytes()
    # a re-run of the same study: identical metrics, different wall-clock times
    for di, dose in enumerate(DOSES):
        for split in SPLITS:
            write_metrics_csv(
                compare_dir(run_dir, dose, "dense", split) / "comparison_metrics.csv",
                di,
                split,
                seconds=99.25 + di,
            )
    paths = aggregate(run_dir, conditions(), compare_jobs())
    assert {p.name for p in paths} == {
        "metrics_long.csv",
        "metrics_summary.json",
        "metrics_summary.md",
        "deltas.json",
        "verdict.json",
        "highlights.txt",
    }
    assert all(p.is_file() and p.parent == a for p in paths)
    second = (a / "metrics_summary.json").read_bytes()
    assert second == first
    assert b"computation_time_s" not in second and b"99.25" not in second
    assert b"NaN" not in second
    assert first.decode() == json.dumps(json.loads(first), sort_keys=True, indent=2) + "\n"
    # ... while the long table does carry the new timings (so it is not vacuously equal)
    assert "99.25" in (a / "metrics_long.csv").read_text()


def test_aggregate_floats_are_exactly_the_csv_values(run_dir):
    s = _summary(run_dir)
    for r in collect_rows(run_dir, conditions()):
        if r["metric"] in TUPLE_METRICS:
            cell = s["by_condition"][f"dose_{int(r['dose'])}/dense/{r['split']}"][r["model"]]
            assert cell[r["metric"]]["phase"] == r["phase"]


def test_collect_rows_on_a_real_compare_bundle(tmp_path):
    """The parser keeps up with compare()'s real output, including a failed arm."""
    from conftest import make_dataset

    from ptychobench.data.recon import Reconstruction
    from ptychobench.evaluate.compare import compare

    ds = make_dataset(n=12, N=8, H=40, W=48)
    rng = np.random.default_rng(0)
    good = (ds.objectGuess + 0.05 * rng.normal(size=ds.objectGuess.shape)).astype(np.complex64)
    ones = np.ones(good.shape, np.float32)
    arms = {
        "PtychoPINN": Reconstruction(good, ones, {"seconds": 3.0}),
        "PtyChi": Reconstruction(np.zeros_like(good), ones, {"seconds": 1.0}),
    }
    compare(ds, arms, compare_dir(tmp_path, 1e3, "dense", "test"))
    conds = [{"dose": 1e3, "view": "dense", "split": "test"}]
    rows = collect_rows(tmp_path, conds)
    err = [r for r in rows if r["metric"] == "error"]
    assert len(err) == 1 and err[0]["model"] == "PtyChi" and "all zeros" in err[0]["value"]
    s = summarise(rows, [{"id": "c", "status": "success", **conds[0]}])
    assert set(s["aggregate_metrics"]) == {"PtychoPINN", "PtyChi", "Flat"}
    assert set(s["aggregate_metrics"]["PtychoPINN"]) == set(TUPLE_METRICS)
    pinn = s["aggregate_metrics"]["PtychoPINN"]["ssim"]
    assert pinn["n"] == 1 and 0.9 < pinn["mean_phase"] <= 1.0
    assert s["aggregate_metrics"]["PtyChi"]["ssim"]["mean_phase"] is None
    assert (s["n_failed"], s["n_arm_errors"]) == (1, 1)
    assert "computation_time_s" not in json.dumps(s)
    assert not math.isnan(s["aggregate_metrics"]["Flat"]["mae"]["mean_amplitude"])
