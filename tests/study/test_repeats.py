"""Repeats and uncertainty: seeds per repeat, Student-t intervals, paired differences, verdicts,
and a tiny two-repeat study that resumes after SIGKILL with identical summaries."""

from __future__ import annotations

import json
import math
import signal
import time
import tomllib

import numpy as np
import pytest
from scipy import stats
from test_study_run import _cli

from ptychobench.study.aggregate import (
    CI_METHOD,
    deltas,
    interval,
    is_tie,
    mean_rows,
    summarise,
    verdicts,
)
from ptychobench.study.design import DesignError, design_from_dict, load_preset, repeat_seed
from ptychobench.study.jobs import conditions, job_settings, plan
from ptychobench.study.run import StudyError, parse_only, select

# ------------------------------------------------------------------------------ intervals


@pytest.mark.parametrize(
    "sample", [[0.61, 0.64, 0.59], [1.0, 2.0, 4.0, 8.0, 16.0], [0.5, 0.52], [3.0] * 4]
)
def test_interval_matches_scipy_student_t(sample):
    st = interval(sample)
    n = len(sample)
    mean = float(np.mean(sample))
    sem = float(np.std(sample, ddof=1)) / math.sqrt(n)
    assert st["n_repeats"] == n
    assert st["mean"] == pytest.approx(mean, rel=1e-12)
    assert st["std"] == pytest.approx(float(np.std(sample, ddof=1)), abs=1e-12)
    if sem == 0:
        assert st["ci95_low"] == st["ci95_high"] == pytest.approx(mean)
    else:
        lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=sem)
        assert st["ci95_low"] == pytest.approx(lo, rel=1e-10)
        assert st["ci95_high"] == pytest.approx(hi, rel=1e-10)


def test_interval_of_one_or_no_value_has_no_spread():
    one = interval([0.7])
    assert one == {"mean": 0.7, "std": None, "ci95_low": None, "ci95_high": None, "n_repeats": 1}
    none = interval([float("nan"), None])
    assert none["mean"] is None and none["n_repeats"] == 0
    # a non-finite repeat is dropped, not averaged in
    assert interval([0.5, float("nan"), 0.7])["n_repeats"] == 2
    assert "Student-t" in CI_METHOD


def test_tie_exactly_when_the_interval_contains_zero():
    assert is_tie({"ci95_low": -0.01, "ci95_high": 0.02}) is True
    assert is_tie({"ci95_low": 0.0, "ci95_high": 0.02}) is True  # 0 on the boundary: contained
    assert is_tie({"ci95_low": 0.001, "ci95_high": 0.02}) is False
    assert is_tie({"ci95_low": -0.03, "ci95_high": -1e-9}) is False
    assert is_tie({"ci95_low": None, "ci95_high": None}) is None


# ------------------------------------------------------------------------------ rows


def _rows(values: dict[str, list[float]], metric="ssim", dose=1000.0, view="dense"):
    """Fake metrics_long rows: ``{arm: [phase per repeat]}`` (amplitude = phase / 2)."""
    out = []
    for arm, per_rep in values.items():
        for r, v in enumerate(per_rep):
            out.append(
                {
                    "dose": dose,
                    "view": view,
                    "split": "test",
                    "repeat": r,
                    "model": arm,
                    "metric": metric,
                    "amplitude": v / 2,
                    "phase": v,
                    "value": None,
                }
            )
    return out


def _jobs(rows):
    seen = {}
    for r in rows:
        key = (r["dose"], r["view"], r["split"], r["repeat"])
        seen[key] = {
            "id": f"c{len(seen)}",
            "status": "success",
            "dose": r["dose"],
            "view": r["view"],
            "split": r["split"],
            "repeat": r["repeat"],
        }
    return list(seen.values())


def test_paired_interval_of_identical_arms_is_exactly_zero():
    vals = [0.31, 0.47, 0.38]
    rows = _rows({"PtychoPINN": vals, "Baseline": list(vals)})
    d = deltas(summarise(rows, _jobs(rows)), rows)
    st = d["paired"]["by_condition"]["dose_1000/dense/test"]["vs_Baseline"]["ssim"]["phase"]
    assert (st["mean"], st["std"], st["ci95_low"], st["ci95_high"]) == (0.0, 0.0, 0.0, 0.0)
    agg = d["paired"]["aggregate"]["vs_Baseline"]["ssim"]["phase"]
    assert (agg["ci95_low"], agg["ci95_high"]) == (0.0, 0.0) and agg["n_repeats"] == 3


def test_paired_differences_use_per_repeat_pairs():
    # large between-repeat spread, constant within-repeat difference: paired CI is tight
    pinn, other = [0.2, 0.5, 0.8], [0.1, 0.4, 0.7]
    rows = _rows({"PtychoPINN": pinn, "PtyChi": other})
    d = deltas(summarise(rows, _jobs(rows)), rows)
    st = d["paired"]["by_condition"]["dose_1000/dense/test"]["vs_PtyChi"]["ssim"]["phase"]
    assert st["mean"] == pytest.approx(0.1) and st["std"] == pytest.approx(0.0, abs=1e-12)
    assert st["ci95_low"] > 0  # an unpaired test would not separate these two arms


def test_summary_has_mean_std_ci_for_every_cell_and_means_in_by_condition():
    rows = _rows({"PtychoPINN": [0.3, 0.4], "PtyChi": [0.7, 0.8], "Flat": [0.2, 0.2]})
    s = summarise(rows, _jobs(rows), repeats=[{"repeat": 0}, {"repeat": 1}])
    assert s["n_repeats"] == 2 and s["ci_method"] == CI_METHOD
    for model in ("PtychoPINN", "PtyChi", "Flat"):
        for part in ("amplitude", "phase"):
            cell = s["uncertainty"]["dose_1000/dense/test"][model]["ssim"][part]
            assert set(cell) == {"mean", "std", "ci95_low", "ci95_high", "n_repeats"}
            assert cell["n_repeats"] == 2
            assert s["by_condition"]["dose_1000/dense/test"][model]["ssim"][part] == cell["mean"]
    assert s["by_condition"]["dose_1000/dense/test"]["PtyChi"]["ssim"]["phase"] == pytest.approx(
        0.75
    )
    means = {r["model"]: r["phase"] for r in mean_rows(rows)}
    assert means == pytest.approx({"PtychoPINN": 0.35, "PtyChi": 0.75, "Flat": 0.2})


def test_verdict_names_the_winner_or_a_tie():
    clear = _rows({"PtychoPINN": [0.30, 0.32, 0.31], "PtyChi": [0.70, 0.74, 0.69]})
    v = next(x for x in verdicts(clear) if (x["metric"], x["part"]) == ("ssim", "phase"))
    assert v["leader"] == "PtyChi" and v["runner_up"] == "PtychoPINN" and v["tie"] is False
    assert v["arm"] == "PtyChi" and v["margin"] == pytest.approx(0.40, abs=1e-12)
    assert v["ci95_low"] > 0
    close = _rows({"PtychoPINN": [0.50, 0.40, 0.61], "PtyChi": [0.45, 0.52, 0.55]})
    v = next(x for x in verdicts(close) if (x["metric"], x["part"]) == ("ssim", "phase"))
    assert v["tie"] is True and v["arm"] == "tie" and v["ci95_low"] <= 0 <= v["ci95_high"]
    # one repeat: a winner, but no interval and no tie test
    single = _rows({"PtychoPINN": [0.5], "PtyChi": [0.6]})
    v = next(x for x in verdicts(single) if (x["metric"], x["part"]) == ("ssim", "phase"))
    assert v["arm"] == "PtyChi" and v["tie"] is None and v["ci95_low"] is None


def test_verdict_lower_is_better_for_nrmse_and_flat_never_wins():
    rows = []
    nrmse = {"PtychoPINN": [0.30, 0.31], "PtyChi": [0.20, 0.22], "Flat": [0.1, 0.1]}
    for arm, vals in nrmse.items():
        for r, v in enumerate(vals):
            rows.append(
                {"dose": 1e4, "view": "sparse", "split": "test", "repeat": r, "model": arm,
                 "metric": "nrmse", "amplitude": None, "phase": None, "value": v}
            )
    v = next(x for x in verdicts(rows) if x["metric"] == "nrmse")
    assert v["leader"] == "PtyChi" and v["margin"] == pytest.approx(0.095)
    assert v["floor"] == pytest.approx(0.1)


# ------------------------------------------------------------------------------ design / plan


def _design(**extra):
    doc = {"doses": [1e3], "views": {"dense": {"gridsize": 1}}, "arms": ["PtychoPINN", "PtyChi"]}
    return design_from_dict({**doc, **extra})


def test_repeat_seeds_differ_are_derived_and_keep_the_object():
    d = _design(repeats=3, seeds={"simulation": 5, "noise": 6, "grouping": 7, "training": 8})
    seeds = [d.seeds_for(r) for r in range(3)]
    assert seeds[0] == {"object": 5, "scan": 5, "noise": 6, "grouping": 7, "training": 8}
    for key in ("scan", "noise", "grouping", "training"):
        assert len({s[key] for s in seeds}) == 3, key  # independent per repeat
    assert {s["object"] for s in seeds} == {5}  # the same object in every repeat
    assert seeds[2]["noise"] == repeat_seed(6, 2) == repeat_seed(6, 2)
    assert d.repeat_records() == [{"repeat": r, "seeds": seeds[r]} for r in range(3)]
    # the settings that enter the job keys carry them
    jobs = {j.id: j for j in plan(d)}
    sim0 = job_settings(jobs["simulate.dose_1000"], d)
    sim2 = job_settings(jobs["simulate.dose_1000_r2"], d)
    assert sim0["scan_seed"] is None and sim2["scan_seed"] == seeds[2]["scan"]
    assert sim2["seed"] == sim0["seed"] == 5 and sim2["noise_seed"] != sim0["noise_seed"]
    tr = job_settings(jobs["train_pinn.dose_1000_r1.dense"], d)
    assert tr["context"]["seed"] == seeds[1]["training"]
    assert job_settings(jobs["view.dose_1000_r1.dense.test"], d)["seed"] == seeds[1]["grouping"]


def test_plan_replicates_every_condition_and_one_repeat_keeps_its_ids():
    one, three = _design(), _design(repeats=3)
    ids1 = [j.id for j in plan(one)]
    ids3 = [j.id for j in plan(three)]
    assert set(ids1) <= set(ids3)  # repeat 0 is the one-repeat study, unchanged
    n_compute = len([i for i in ids1 if i not in ("aggregate", "report", "verify")])
    assert len(ids3) == 3 * n_compute + 3
    assert "compare.dose_1000_r2.dense.test" in ids3
    assert len(conditions(three)) == 3 * len(conditions(one))
    assert {c["repeat"] for c in conditions(three)} == {0, 1, 2}
    only = select(plan(three), parse_only("repeat=1,split=test"), three)
    assert {j.repeat for j in only} == {1}
    with pytest.raises(StudyError, match="repeat"):
        select(plan(three), parse_only("repeat=3"), three)


def test_presets_repeats_and_bad_values():
    assert load_preset("quick").repeats == 1
    assert load_preset("laptop").repeats == 3 and load_preset("fly64").repeats == 3
    with pytest.raises(DesignError, match="repeats"):
        _design(repeats=0)


# ------------------------------------------------------------------------------ end to end

TINY_REPEATS = """\
name = "tiny-repeats"
arms = ["PtychoPINN", "Baseline", "PtyChi"]
doses = [1e4]
repeats = 2
device = "cpu"
num_threads = 1

[views.dense]
gridsize = 1

[simulation]
N = 32
object_size = 96
jitter_px = 1.0

[pinn]
epochs = 2
n_filters_scale = 0.25

[baseline]
epochs = 2
n_filters_scale = 0.25
loss = "mae"

[iterative]
epochs = 6

[metrics]
phase_sync = 0  # the value these tests were written at (the default is 20)
"""


@pytest.fixture(scope="module")
def repeats_toml(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "tiny_repeats.toml"
    p.write_text(TINY_REPEATS)
    return p


@pytest.fixture(scope="module")
def repeats_run(repeats_toml, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "run"
    p = _cli("study", "run", str(repeats_toml), "--out", str(out), "--no-progress")
    stdout, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    (out.parent / "stdout.txt").write_text(stdout)
    return out


def test_two_repeat_study_records_seeds_and_intervals(repeats_run):
    from ptychobench.data.io import load

    run = repeats_run
    man = json.loads((run / "manifest.json").read_text())
    design = design_from_dict(tomllib.loads(TINY_REPEATS))
    assert man["repeats"] == json.loads(json.dumps(design.repeat_records()))
    a, b = load(run / "data/dose_10000/full.npz"), load(run / "data/dose_10000_r1/full.npz")
    assert a.metadata["seeds"] != b.metadata["seeds"]
    assert b.metadata["seeds"]["scan"] == design.seeds_for(1)["scan"]
    np.testing.assert_array_equal(a.objectGuess, b.objectGuess)  # one object ...
    assert not np.array_equal(a.xcoords, b.xcoords)  # ... another scan jitter
    assert not np.array_equal(a.diffraction, b.diffraction)  # ... and another noise draw
    s = json.loads((run / "analysis/metrics_summary.json").read_text())
    assert s["n_repeats"] == 2 and s["n_jobs"] == 4
    cell = s["uncertainty"]["dose_10000/dense/test"]["PtyChi"]["ssim"]["phase"]
    assert cell["n_repeats"] == 2 and cell["ci95_low"] <= cell["mean"] <= cell["ci95_high"]
    long = (run / "analysis/metrics_long.csv").read_text().splitlines()
    assert long[0].startswith("dose,view,split,repeat,model")
    assert {ln.split(",")[3] for ln in long[1:]} == {"0", "1"}
    verdict = json.loads((run / "analysis/verdict.json").read_text())
    head = [v for v in verdict["verdicts"] if (v["metric"], v["part"]) == ("ssim", "phase")]
    assert len(head) == 1 and head[0]["n_repeats"] == 2
    html = (run / "analysis/report.html").read_text()
    assert '<table id="verdict"' in html
    # the terminal says the verdict too, with its interval over the two repeats
    said = (run.parent / "stdout.txt").read_text()
    assert "verdict: dense view, phase SSIM: at 1e4 photons" in said and "95 % CI" in said
    rep = json.loads((run / "analysis/verification_report.json").read_text())
    assert rep["all_valid"], [c for c in rep["checks"] if not c["valid"]]


def test_sigkill_during_repeat_then_resume_gives_identical_summaries(
    repeats_run, repeats_toml, tmp_path
):
    run = tmp_path / "run"
    p = _cli("study", "run", str(repeats_toml), "--out", str(run), "--no-progress")
    t0 = time.time()
    while time.time() - t0 < 600 and p.poll() is None:
        if (run / "logs/train_pinn.dose_10000_r1.dense.log").exists():
            break
        time.sleep(0.02)
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL, "the run ended before repeat 1 trained"
    p2 = _cli("study", "run", str(repeats_toml), "--out", str(run), "--no-progress")
    _, err = p2.communicate(timeout=900)
    assert p2.returncode == 0, err[-3000:]
    assert json.loads((run / "manifest.json").read_text())["runs"][1]["n_skipped"] > 0
    for name in ("metrics_summary.json", "deltas.json", "verdict.json"):
        assert (run / "analysis" / name).read_bytes() == (
            repeats_run / "analysis" / name
        ).read_bytes(), name

    # the long table carries wall-clock seconds too: every other row is identical
    def scores(path):
        clock = ("computation_time_s", "train_s", "infer_s", "refine_s")
        return [ln for ln in path.read_text().splitlines() if ln.split(",")[5] not in clock]

    assert scores(run / "analysis/metrics_long.csv") == scores(
        repeats_run / "analysis/metrics_long.csv"
    )


@pytest.mark.parametrize("name", ["quick", "laptop", "fly64"])
def test_with_repeats_rewrites_the_design_text_it_records(name):
    from ptychobench.study.design import preset_text, with_repeats

    design = load_preset(name)
    new, text = with_repeats(design, preset_text(name), 4)
    assert new.repeats == 4 and new.name == f"{name}-r4"
    parsed = design_from_dict(tomllib.loads(text))
    assert parsed.model_dump() == new.model_dump()  # study.toml says what ran
    rest = {k: v for k, v in new.model_dump().items() if k not in ("repeats", "name")}
    assert rest == {k: v for k, v in design.model_dump().items() if k not in ("repeats", "name")}
