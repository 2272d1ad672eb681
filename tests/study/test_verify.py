"""study.verify: a good run passes every check; each kind of damage fails the right check."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_aggregate import conditions, make_run, write_metrics_csv, write_report

from ptychobench.data.io import sha256_file
from ptychobench.study.verify import verify, write_inventory

CHECK_NAMES = [
    "artifact inventory",
    "artifact hashes",
    "artifacts parse",
    "planned jobs",
    "summary agrees with CSVs",
    "deltas agree",
    "highlights agree",
    "report agrees",
    "no all-zero or non-finite arm",
    "costs add up",
    "splits disjoint",
]
CSV_TEST = "compare/dose_1000/dense/test/comparison_metrics.csv"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path)


def checks(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def invalid(report: dict) -> set[str]:
    return {c["name"] for c in report["checks"] if not c["valid"]}


def test_good_run_is_all_valid_and_report_is_written(run):
    rep = verify(run)
    assert [c["name"] for c in rep["checks"]] == CHECK_NAMES
    assert invalid(rep) == set(), [c for c in rep["checks"] if not c["valid"]]
    assert rep["all_valid"] is True
    assert (rep["n_checks"], rep["n_valid"], rep["n_invalid"]) == (11, 11, 0)
    on_disk = json.loads((run / "analysis" / "verification_report.json").read_text())
    assert on_disk == rep
    # the bundles' SHA256SUMS were cross-checked, PNGs decoded, ...
    assert re.search(r"\b\d+ files", checks(rep)["artifacts parse"]["detail"])


def test_inventory_lists_artifacts_sorted_and_excludes_volatile_paths(run):
    lines = (run / "analysis" / "artifact_inventory.txt").read_text().splitlines()
    paths = [ln.split("  ", 1)[1] for ln in lines]
    assert paths == sorted(paths)
    assert CSV_TEST in paths and "study.toml" in paths and "analysis/report.html" in paths
    assert "models/dose_1000/dense/pinn/SHA256SUMS" in paths
    assert "manifest.json" not in paths
    assert not any(p.startswith("logs/") or "/." in p or p.startswith(".") for p in paths)
    assert "analysis/artifact_inventory.txt" not in paths
    digest = dict(ln.split("  ", 1)[::-1] for ln in lines)
    assert digest[CSV_TEST] == sha256_file(run / CSV_TEST)
    # verification_report.json is written later and must stay out of a rewritten inventory
    verify(run)
    write_inventory(run)
    assert (
        "analysis/verification_report.json"
        not in (run / "analysis" / "artifact_inventory.txt").read_text()
    )


def test_tampered_csv_number_is_caught_and_named(run):
    p = run / CSV_TEST
    text = p.read_text()
    assert "0.2461234" in text
    p.write_text(text.replace("0.2461234", "0.2561234"))
    rep = verify(run)
    assert rep["all_valid"] is False
    bad = invalid(rep)
    assert {"artifact hashes", "summary agrees with CSVs", "report agrees"} <= bad
    c = checks(rep)
    assert CSV_TEST in c["artifact hashes"]["detail"]
    assert CSV_TEST in c["summary agrees with CSVs"]["detail"]
    assert "0.2461234" in c["summary agrees with CSVs"]["detail"]  # found (summary) value
    assert CSV_TEST in c["report agrees"]["detail"]
    assert "0.2561234" in c["report agrees"]["detail"]  # expected (CSV) value


def test_costs_that_do_not_add_up_are_named(run):
    p = run / CSV_TEST
    lines = p.read_text().splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("PtyChi,refine_s,"))
    lines[i] = "PtyChi,refine_s,,,4.0"
    p.write_text("\n".join(lines) + "\n")
    rep = verify(run)
    assert "costs add up" in invalid(rep)
    detail = checks(rep)["costs add up"]["detail"]
    assert CSV_TEST in detail and "PtyChi" in detail and "infer_s + refine_s" in detail


def test_deleted_artifact_is_named(run):
    rel = "compare/dose_100000/dense/train/comparison_plot.png"
    (run / rel).unlink()
    rep = verify(run)
    assert invalid(rep) == {"artifact hashes"}
    detail = checks(rep)["artifact hashes"]["detail"]
    assert rel in detail and "found none" in detail


def test_failed_job_in_manifest_is_named(run):
    m = json.loads((run / "manifest.json").read_text())
    jid = "iterative.dose_100000.dense.test"
    m["jobs"][jid].update(status="failed", error="PtyChi diverged")
    m["jobs"]["train_pinn.dose_1000.dense"]["status"] = "blocked"
    (run / "manifest.json").write_text(json.dumps(m))
    rep = verify(run)
    assert invalid(rep) == {"planned jobs"}
    detail = checks(rep)["planned jobs"]["detail"]
    assert jid in detail and "'failed'" in detail and "PtyChi diverged" in detail
    assert f"logs/{jid}.log" in detail
    assert "train_pinn.dose_1000.dense" in detail and "'blocked'" in detail
    assert detail.startswith("2 of ")


def test_missing_planned_job_record_is_invalid(run):
    m = json.loads((run / "manifest.json").read_text())
    del m["jobs"]["split.dose_1000"]
    (run / "manifest.json").write_text(json.dumps(m))
    rep = verify(run)
    assert "planned jobs" in invalid(rep)
    assert "split.dose_1000" in checks(rep)["planned jobs"]["detail"]


def test_overlapping_split_positions_are_caught(run):
    d = run / "data" / "dose_1000"
    with np.load(d / "train.npz") as tr, np.load(d / "test.npz") as te:
        x = np.concatenate([te["xcoords"], tr["xcoords"][:1]])
        y = np.concatenate([te["ycoords"], tr["ycoords"][:1]])
    np.savez(d / "test.npz", xcoords=x, ycoords=y)
    write_inventory(run)  # isolate the semantic check from the hash check
    rep = verify(run)
    assert invalid(rep) == {"splits disjoint"}
    detail = checks(rep)["splits disjoint"]["detail"]
    assert "data/dose_1000/train.npz" in detail and "data/dose_1000/test.npz" in detail
    assert "found 1" in detail


def test_overlap_inside_a_view_is_caught(run):
    d = run / "data" / "dose_100000" / "dense"
    with np.load(d / "train.npz") as tr:
        np.savez(d / "test.npz", xcoords=tr["xcoords"], ycoords=tr["ycoords"])
    write_inventory(run)
    rep = verify(run)
    assert invalid(rep) == {"splits disjoint"}
    assert "data/dose_100000/dense/test.npz" in checks(rep)["splits disjoint"]["detail"]


@pytest.mark.parametrize("fill,word", [(0.0, "all zeros"), (np.nan, "NaN")])
def test_all_zero_or_nonfinite_arm_is_caught(run, fill, word):
    rel = "compare/dose_100000/dense/test/reconstructions.npz"
    with np.load(run / rel) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["PtyChi_raw"] = np.full_like(arrays["PtyChi_raw"], fill)
    np.savez(run / rel, **arrays)
    write_inventory(run)
    rep = verify(run)
    assert invalid(rep) == {"no all-zero or non-finite arm"}
    detail = checks(rep)["no all-zero or non-finite arm"]["detail"]
    assert rel in detail and "PtyChi_raw" in detail and word in detail


def test_error_row_is_caught(run):
    write_metrics_csv(run / CSV_TEST, 0, "test", error_arm="Baseline")
    rep = verify(run)
    detail = checks(rep)["no all-zero or non-finite arm"]["detail"]
    assert "no all-zero or non-finite arm" in invalid(rep)
    assert CSV_TEST in detail and "Baseline" in detail and "all zeros" in detail


def test_report_cell_with_other_value_is_caught(run):
    p = run / "analysis" / "report.html"
    html = p.read_text()
    cell = (
        'data-condition="dose_100000/dense/test" data-model="Baseline" data-metric="ssim" '
        'data-part="phase" data-value="0.24"'
    )
    assert cell in html
    p.write_text(html.replace(cell, cell.replace('data-value="0.24"', 'data-value="0.25"')))
    write_inventory(run)
    rep = verify(run)
    assert invalid(rep) == {"report agrees"}
    detail = checks(rep)["report agrees"]["detail"]
    assert "analysis/report.html" in detail
    assert "dose_100000/dense/test/Baseline/ssim/phase" in detail
    assert "expected data-value 0.24" in detail and "found '0.25'" in detail
    assert "compare/dose_100000/dense/test/comparison_metrics.csv" in detail


def _cell_attrs(cond: str, model: str) -> str:
    return f'data-condition="{cond}" data-model="{model}" data-metric="ssim" data-part="phase"'


def test_report_missing_phase_ssim_cell_is_caught(run):
    p = run / "analysis" / "report.html"
    html = p.read_text()
    lines = [
        ln for ln in html.splitlines() if _cell_attrs("dose_1000/dense/test", "PtyChi") not in ln
    ]
    assert len(lines) == len(html.splitlines()) - 1
    p.write_text("\n".join(lines) + "\n")
    write_inventory(run)
    rep = verify(run)
    assert invalid(rep) == {"report agrees"}
    detail = checks(rep)["report agrees"]["detail"]
    assert "data-condition=dose_1000/dense/test data-model=PtyChi" in detail
    # train-split cells are not required: dropping one is fine
    lines = [
        ln for ln in html.splitlines() if _cell_attrs("dose_1000/dense/train", "PtyChi") not in ln
    ]
    p.write_text("\n".join(lines) + "\n")
    write_inventory(run)
    assert verify(run)["all_valid"] is True


@pytest.mark.parametrize(
    "name,edit,check",
    [
        (
            "metrics_summary.json",
            lambda s: s.replace('"n_success": 4', '"n_success": 3'),
            "summary agrees with CSVs",
        ),
        (
            "deltas.json",
            lambda s: json.dumps({**json.loads(s), "aggregate_split": "train"}),
            "deltas agree",
        ),
        ("highlights.txt", lambda s: s.replace("+0.015", "+0.016"), "highlights agree"),
    ],
)
def test_edited_analysis_file_is_caught(run, name, edit, check):
    p = run / "analysis" / name
    before = p.read_text()
    after = edit(before)
    assert after != before
    p.write_text(after)
    write_inventory(run)
    rep = verify(run)
    assert invalid(rep) == {check}
    assert f"analysis/{name}" in checks(rep)[check]["detail"]


def test_summary_float_within_tolerance_is_accepted_but_not_beyond(run):
    p = run / "analysis" / "metrics_summary.json"
    doc = json.loads(p.read_text())
    pinn = doc["aggregate_metrics"]["PtychoPINN"]["ms_ssim"]
    pinn["mean_phase"] *= 1 + 1e-14
    p.write_text(json.dumps(doc))
    write_inventory(run)
    assert verify(run)["all_valid"] is True
    pinn["mean_phase"] *= 1 + 1e-9
    p.write_text(json.dumps(doc))
    write_inventory(run)
    rep = verify(run)
    assert invalid(rep) == {"summary agrees with CSVs"}
    assert (
        "aggregate_metrics.PtychoPINN.ms_ssim.mean_phase"
        in checks(rep)["summary agrees with CSVs"]["detail"]
    )


def test_corrupt_files_fail_the_parse_check(run):
    png = "compare/dose_1000/dense/train/comparison_plot.png"
    npz = "iterative/dose_1000/dense/test/recon.npz"
    js = "data/dose_1000/dense/overlap_test.json"
    (run / png).write_bytes((run / png).read_bytes()[:30])
    (run / npz).write_bytes(b"PK\x03\x04 truncated")
    (run / js).write_text('{"overlap": ')
    write_inventory(run)
    rep = verify(run)
    assert invalid(rep) == {"artifacts parse"}
    detail = checks(rep)["artifacts parse"]["detail"]
    assert detail.startswith("3 of ")
    assert png in detail and npz in detail and js in detail


def test_bundle_sha256sums_mismatch_fails_the_parse_check(run):
    rel = "models/dose_100000/dense/baseline/config.json"
    (run / rel).write_text('{"schema_version": 2}')
    write_inventory(run)
    rep = verify(run)
    assert invalid(rep) == {"artifacts parse"}
    detail = checks(rep)["artifacts parse"]["detail"]
    assert "models/dose_100000/dense/baseline/SHA256SUMS" in detail and "config.json" in detail


def test_broken_run_does_not_crash(tmp_path):
    run = tmp_path / "empty"
    (run / "analysis").mkdir(parents=True)
    (run / "manifest.json").write_text("{ not json")
    rep = verify(run)
    assert [c["name"] for c in rep["checks"]] == CHECK_NAMES
    assert rep["all_valid"] is False and rep["n_invalid"] == 11
    c = checks(rep)
    assert "analysis/artifact_inventory.txt" in c["artifact inventory"]["detail"]
    assert "JSONDecodeError" in c["planned jobs"]["detail"]
    assert (run / "analysis" / "verification_report.json").is_file()


def test_malformed_inventory_line_is_named(run):
    p = run / "analysis" / "artifact_inventory.txt"
    lines = p.read_text().splitlines()
    lines[3] = "deadbeef  " + lines[3].split("  ", 1)[1]
    p.write_text("\n".join(lines) + "\n")
    rep = verify(run)
    assert {"artifact inventory", "artifact hashes"} <= invalid(rep)
    assert "line 4" in checks(rep)["artifact inventory"]["detail"]


def test_conditions_come_from_the_manifest(run):
    """A condition the manifest names but whose compare output is gone is reported."""
    m = json.loads((run / "manifest.json").read_text())
    assert m["conditions"] == conditions()
    m["conditions"].append({"dose": 1e4, "view": "dense", "split": "test"})
    (run / "manifest.json").write_text(json.dumps(m))
    rep = verify(run)
    assert "no all-zero or non-finite arm" in invalid(rep)
    assert (
        "compare/dose_10000/dense/test/reconstructions.npz"
        in checks(rep)["no all-zero or non-finite arm"]["detail"]
    )


@pytest.mark.parametrize("value,ok", [("", True), ("0.4", False)])
def test_report_cell_for_an_empty_csv_cell(run, value, ok):
    """The Flat arm's frc50 phase cell is empty in the CSV: only an empty data-value agrees."""
    p = run / "analysis" / "report.html"
    cell = (
        f'<td data-condition="dose_100000/dense/test" data-model="Flat" data-metric="frc50" '
        f'data-part="phase" data-value="{value}">n/a</td>'
    )
    p.write_text(p.read_text().replace("</table>", f"<tr>{cell}</tr></table>"))
    write_inventory(run)
    rep = verify(run)
    assert rep["all_valid"] is ok
    if not ok:
        assert invalid(rep) == {"report agrees"}
        detail = checks(rep)["report agrees"]["detail"]
        assert "Flat/frc50/phase: expected data-value None" in detail


def test_failed_arm_needs_no_report_cell_but_fails_the_arm_check(run):
    """An arm with an error row has no phase SSIM: only the arm check (not the report) fails."""
    write_metrics_csv(run / CSV_TEST, 0, "test", error_arm="PtyChi")
    from ptychobench.study.aggregate import aggregate, compare_jobs_from_manifest

    m = json.loads((run / "manifest.json").read_text())
    aggregate(run, m["conditions"], compare_jobs_from_manifest(m))
    write_report(run)  # the verdict grid follows the new CSV (PtyChi no longer competes there)
    p = run / "analysis" / "report.html"
    gone = 'data-condition="dose_1000/dense/test" data-model="PtyChi"'
    p.write_text("\n".join(ln for ln in p.read_text().splitlines() if gone not in ln) + "\n")
    write_inventory(run)
    rep = verify(run)
    assert invalid(rep) == {"no all-zero or non-finite arm"}
    # ... whereas a missing cell for an arm that does have a number is still required
    gone = 'data-condition="dose_100000/dense/test" data-model="PtyChi"'
    p.write_text("\n".join(ln for ln in p.read_text().splitlines() if gone not in ln) + "\n")
    write_inventory(run)
    rep = verify(run)
    assert invalid(rep) == {"no all-zero or non-finite arm", "report agrees"}
    assert "dose_100000/dense/test data-model=PtyChi" in checks(rep)["report agrees"]["detail"]


def test_edited_verdict_cell_is_caught(run):
    """A grid cell naming another arm (or another margin) than the CSVs give fails the report."""
    p = run / "analysis" / "report.html"
    html = p.read_text()
    m = re.search(r'data-arm="([^"]*)" data-margin="([^"]*)"', html)
    assert m, "the fake report has a verdict grid"
    other = "Baseline" if m.group(1) != "Baseline" else "PtyChi"
    p.write_text(html.replace(m.group(0), f'data-arm="{other}" data-margin="{m.group(2)}"', 1))
    write_inventory(run)
    rep = verify(run)
    assert invalid(rep) == {"report agrees"}
    assert f"found '{other}'" in checks(rep)["report agrees"]["detail"]
    # and a dropped cell of the headline grid is missed
    p.write_text(html.replace(m.group(0), 'data-gone="1"', 1))
    write_inventory(run)
    assert "expected a verdict-grid cell" in checks(verify(run))["report agrees"]["detail"]


def test_a_failed_verification_reads_in_five_short_lines(tmp_path):
    from ptychobench.study.verify import REPORT, failure_lines

    checks = [{"name": f"check {i}", "valid": i >= 5, "detail": "y" * 900 + "\nmore"}
              for i in range(8)]
    rep = {"all_valid": False, "n_checks": 8, "n_valid": 3, "n_invalid": 5, "checks": checks}
    lines = failure_lines(tmp_path, rep)
    assert lines[0] == "5 of 8 checks invalid"
    assert [line.split(":")[0] for line in lines[1:4]] == ["check 0", "check 1", "check 2"]
    assert lines[-1] == f"and 2 more; every check's detail: {tmp_path / REPORT}"
    assert len(lines) == 5 and max(map(len, lines)) <= 300 and "more" not in lines[1]
