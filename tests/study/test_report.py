"""Tests for the study report: a fake 2 doses × 2 views × 2 splits run directory, rendered once
per module (rendering is the slow part), then checked for structure, embedded images, the
verifier's ``data-*`` cell contract, escaping, failures and byte-for-byte determinism."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from ptychobench.evaluate.compare import ARM_ORDER, SCALAR_ROWS, TUPLE_METRICS
from ptychobench.study.report import (
    SCALAR_TABLE_METRICS,
    TABLE_METRICS,
    dose_response_plot,
    montage,
    write_report,
)

DOSES = (1000.0, 100000.0)
VIEWS = ("dense", "sparse")
SPLITS = ("train", "test")
ARMS = ARM_ORDER
FAILED = (100000.0, "sparse", "test")  # the condition whose compare job fails (variant "failed")
EVIL_ERROR = 'compare crashed: <script>alert("x")</script> & more'
CONDITIONS = [(d, v, s) for d in DOSES for v in VIEWS for s in SPLITS]


def _key(dose: float, view: str, split: str) -> str:
    return f"dose_{int(dose)}/{view}/{split}"


def _fmt(x: float) -> str:
    # compare.py's CSV format: 10 significant digits, repr of the rounded float
    return repr(float(f"{x:.10g}"))


def _arm_metrics(ci: int, ai: int) -> dict[str, object]:
    """Known, irregular numbers per (condition, arm) so no two cells coincide by accident."""
    rng = np.random.default_rng(1000 * ci + ai)
    m: dict[str, object] = {}
    for metric in TUPLE_METRICS:
        a, p = rng.uniform(0.05, 0.95, 2)
        m[metric] = (float(a), float(p))
    m["frc50"] = (float(rng.uniform(2, 40)), float(rng.uniform(2, 40)))
    for metric in SCALAR_ROWS:
        m[metric] = float(rng.uniform(0, 3))
    return m


def _write_compare_csv(path: Path, metrics: dict[str, dict], errors: dict[str, str]) -> list:
    """Write a comparison_metrics.csv exactly as compare.py does; return its rows (as lists)."""
    out = []
    for arm in ARMS:
        m = metrics.get(arm, {})
        for metric in TUPLE_METRICS:
            a, p = m.get(metric, (None, None))
            out.append(
                [arm, metric, "" if a is None else _fmt(a), "" if p is None else _fmt(p), ""]
            )
        for metric in SCALAR_ROWS:
            v = m.get(metric)
            out.append([arm, metric, "", "", "" if v is None else _fmt(v)])
        if arm in errors:
            out.append([arm, "error", "", "", errors[arm]])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["model", "metric", "amplitude", "phase", "value"])
        w.writerows(out)
    return out


def _make_run(root: Path, failed: bool) -> dict:
    """Build the fake run dir; return ``{(cond key, arm, metric, part): CSV float}`` and more."""
    run = root / "run"
    (run / "analysis").mkdir(parents=True)
    (run / "logs").mkdir()
    purpose = "" if failed else 'description = "Networks are a <smoke> test & nothing more"\n'
    (run / "study.toml").write_text(
        'name = "fake & <tiny>"\n' + purpose + "doses = [1e3, 1e5]\n\n[views.dense]\ngridsize = 2\n"
    )
    long_rows = []
    expected: dict[tuple, float] = {}
    jobs: dict[str, dict] = {}
    planned: list[str] = []

    def add_job(jid, kind, status="success", seconds=1.0, rss=100.0, error=None, **cond):
        planned.append(jid)
        jobs[jid] = {
            "kind": kind,
            "status": status,
            "seconds": seconds,
            "peak_rss_mb": rss,
            "log": f"logs/{jid}.log",
            "error": error,
            "outputs": {},
            "key": "k",
            **cond,
        }

    rng = np.random.default_rng(7)
    for ci, (dose, view, split) in enumerate(CONDITIONS):
        dd = run / "data" / f"dose_{int(dose)}" / view
        dd.mkdir(parents=True, exist_ok=True)
        gs = 2 if view == "dense" else 1
        (dd / f"overlap_{split}.json").write_text(
            json.dumps(
                {
                    "D": 20.0,
                    "gridsize": gs,
                    "neighbor_count": 6,
                    "n_positions": 40 + ci,
                    "n_unique_positions": 40 + ci,
                    "n_groups": 10 + ci,
                    "metric_1_group": 0.61 if gs == 2 else None,
                    "metric_2_neighbors": 0.42,
                    "metric_3_centres": 0.25,
                },
                indent=2,
                sort_keys=True,
            )
        )
        is_failed = failed and (dose, view, split) == FAILED
        cond = {"dose": dose, "view": view, "split": split}
        add_job(
            f"compare.dose_{int(dose)}.{view}.{split}",
            "compare",
            status="failed" if is_failed else "success",
            seconds=2.0 + ci,
            rss=200.0 + ci,
            error=EVIL_ERROR if is_failed else None,
            **cond,
        )
        if is_failed:
            continue  # no compare dir, no CSV rows: the job died
        errors = {}
        metrics = {arm: _arm_metrics(ci, ai) for ai, arm in enumerate(ARMS)}
        if failed and ci == 0:
            # an arm that could not be scored: empty cells plus an error row
            metrics.pop("PtyChi")
            errors["PtyChi"] = "PtyChi: reconstruction has non-finite values"
        cdir = run / "compare" / f"dose_{int(dose)}" / view / split
        rows = _write_compare_csv(cdir / "comparison_metrics.csv", metrics, errors)
        for model, metric, a, p, v in rows:
            long_rows.append([repr(dose), view, split, model, metric, a, p, v])
            for part, s in (("amplitude", a), ("phase", p), ("value", v)):
                if s and metric != "error":
                    expected[(_key(dose, view, split), model, metric, part)] = float(s)
        truth = np.exp(1j * rng.uniform(-1, 1, (24, 24))) * rng.uniform(0.5, 1, (24, 24))
        arrays = {"truth_crop": truth.astype(np.complex64)}
        for arm in ARMS:
            if arm in errors:
                continue
            noisy = truth + 0.2 * (rng.normal(size=truth.shape) + 1j * rng.normal(size=truth.shape))
            if arm == "Flat":
                noisy = np.full(truth.shape, np.abs(truth).mean())
            arrays[f"{arm}_aligned"] = noisy.astype(np.complex64)
            arrays[f"{arm}_raw"] = np.pad(noisy, 2).astype(np.complex64)
        np.savez(cdir / "reconstructions.npz", **arrays)
    with open(run / "analysis" / "metrics_long.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["dose", "view", "split", "model", "metric", "amplitude", "phase", "value"])
        w.writerows(long_rows)
    n_ok = sum(j["status"] == "success" for j in jobs.values())
    (run / "analysis" / "metrics_summary.json").write_text(
        json.dumps(
            {
                "n_jobs": len(jobs),
                "n_success": n_ok,
                "n_failed": len(jobs) - n_ok,
                "jobs": [
                    {"id": k, **{c: j.get(c) for c in ("dose", "view", "split", "status")}}
                    for k, j in jobs.items()
                ],
                "aggregate_split": "test",
                "aggregate_metrics": {
                    arm: {
                        m: {
                            "mean_amplitude": 0.5 + ai / 10,
                            "mean_phase": 0.4 + ai / 10,
                            "best_amplitude": 0.9,
                            "best_phase": 0.8,
                            "n": 4,
                        }
                        for m in ("ssim", "ms_ssim", "mae", "frc50")
                    }
                    for ai, arm in enumerate(ARMS)
                },
                "by_condition": {},
            }
        )
    )
    (run / "analysis" / "highlights.txt").write_text(
        "PtychoPINN wins phase SSIM at 3/4 conditions\nline two <b>\nline three\nline four\n"
    )
    (run / "analysis" / "deltas.json").write_text(
        json.dumps(
            {
                "paired": {
                    "aggregate": {
                        "vs_Baseline": {
                            "ssim": {
                                "phase": {
                                    "mean": 0.1,
                                    "std": 0.02,
                                    "ci95_low": 0.05,
                                    "ci95_high": 0.15,
                                    "n_repeats": 3,
                                }
                            }
                        }
                    }
                }
            }
        )
    )
    add_job("aggregate", "aggregate", seconds=0.5, rss=90.0)
    add_job("report", "report", status="pending", seconds=None, rss=None)
    for jid, job in jobs.items():
        lines = [f"{jid} line {i} <tag>" for i in range(30)]
        if job["status"] == "failed":
            lines.append("Traceback: ValueError: <boom> & friends")
        (run / job["log"]).write_text("\n".join(lines) + "\n")
    manifest = {
        "format": "ptychobench-study-manifest/1",
        "planned": planned,
        "conditions": [{"dose": d, "view": v, "split": s} for d, v, s in CONDITIONS],
        "jobs": jobs,
        "environment": {
            "python": "3.11.9",
            "torch": "2.11.0",
            "numpy": "2.1.0",
            "ptychi": "2.2.0",
            "platform": "Linux <x86_64>",
            "device": "cpu",
            "cpu_count": 2,
        },
    }
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return {"run": run, "expected": expected, "manifest": manifest}


class _Page(HTMLParser):
    """Collects tags and checks that every non-void element is closed in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr", "col", "area", "base"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.imgs: list[dict] = []
        self.attrs: list[tuple[str, dict]] = []
        self.cells: list[tuple[dict, str]] = []
        self.ids: list[str] = []
        self._cell: dict | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attrs.append((tag, a))
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.imgs.append(a)
        if tag == "td":
            self._cell, self._text = a, []
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag == "td" and self._cell is not None:
            self.cells.append((self._cell, "".join(self._text)))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._text.append(data)


def _parse(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    p.close()
    return p


def _section(text: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', text, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


@pytest.fixture(scope="module")
def ok_run(tmp_path_factory):
    info = _make_run(tmp_path_factory.mktemp("ok"), failed=False)
    info["paths"] = write_report(info["run"])
    info["html"] = (info["run"] / "analysis" / "report.html").read_text(encoding="utf-8")
    return info


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    info = _make_run(tmp_path_factory.mktemp("failed"), failed=True)
    info["paths"] = write_report(info["run"])
    info["html"] = (info["run"] / "analysis" / "report.html").read_text(encoding="utf-8")
    return info


@pytest.mark.parametrize("variant", ["ok_run", "failed_run"])
def test_page_is_well_formed_with_all_sections(variant, request):
    info = request.getfixturevalue(variant)
    page = _parse(info["html"])
    assert page.problems == [] and page.stack == []
    for sid in (
        "design",
        "overlap",
        "summary",
        "tables",
        "plots",
        "cost",
        "montages",
        "timings",
        "environment",
        "failures",
    ):
        assert sid in page.ids
    assert info["html"].startswith("<!DOCTYPE html>")
    analysis = info["run"] / "analysis"
    assert info["paths"] == [
        analysis / "headline_dose_response.png",
        analysis / "dose_response.png",
        analysis / "montage_dose_1000.png",
        analysis / "montage_dose_100000.png",
        analysis / "quality_vs_seconds.png",
        analysis / "report.html",
    ]
    assert all(p.is_file() for p in info["paths"])


@pytest.mark.parametrize("variant", ["ok_run", "failed_run"])
def test_images_are_embedded_decodable_pngs(variant, request):
    import matplotlib.image as mpimg

    info = request.getfixturevalue(variant)
    page = _parse(info["html"])
    # headline + full dose response + one montage per dose + quality vs seconds
    assert len(page.imgs) == 2 + len(DOSES) + 1
    for img in page.imgs:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        raw = base64.b64decode(img["src"][len(prefix) :], validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        px = mpimg.imread(io.BytesIO(raw), format="png")
        assert px.ndim == 3 and px.shape[2] in (3, 4)
        assert px.min() < px.max()
    # the embedded bytes are the files written next to the page
    srcs = {img["src"] for img in page.imgs}
    for p in info["paths"][:-1]:
        assert "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode() in srcs


def test_no_external_resources_and_only_inline_script(ok_run):
    page = _parse(ok_run["html"])
    for tag, attrs in page.attrs:
        for name in ("src", "href"):
            v = attrs.get(name) or ""
            assert not v.lower().startswith(("http://", "https://", "//")), (tag, v)
        assert tag not in ("link", "iframe")
        if tag == "script":
            assert "src" not in attrs  # the metric selector's few inline lines, nothing fetched
    assert sum(tag == "script" for tag, _ in page.attrs) == 1
    assert "http://" not in ok_run["html"] and "https://" not in ok_run["html"]


@pytest.mark.parametrize("variant", ["ok_run", "failed_run"])
def test_metric_cells_carry_exact_csv_numbers(variant, request):
    info = request.getfixturevalue(variant)
    page = _parse(info["html"])
    cells = {}
    for attrs, text in page.cells:
        if "data-value" in attrs and "data-budget" not in attrs:
            k = (
                attrs["data-condition"],
                attrs["data-model"],
                attrs["data-metric"],
                attrs["data-part"],
            )
            assert k not in cells, f"duplicate cell {k}"
            cells[k] = (attrs["data-value"], text)
    expected = info["expected"]
    # the contract the verifier relies on: every (test condition, method arm) phase SSIM
    for dose, view, split in CONDITIONS:
        if split != "test" or (variant == "failed_run" and (dose, view, split) == FAILED):
            continue
        for arm in ("PtychoPINN", "Baseline", "PtyChi"):
            k = (_key(dose, view, split), arm, "ssim", "phase")
            if k not in expected:
                continue
            assert k in cells, k
            assert float(cells[k][0]) == expected[k]
    # and every number cell, whatever the metric, equals its CSV number
    assert cells, "no data-value cells"
    for k, (value, text) in cells.items():
        assert k[2] in (*TABLE_METRICS, "computation_time_s", "train_s", "infer_s", "refine_s")
        scalar = k[2] in SCALAR_TABLE_METRICS or k[2].endswith("_s")
        assert k[3] in (("value",) if scalar else ("phase", "amplitude"))
        assert float(value) == expected[k], k
        assert value == repr(expected[k])
        assert float(text) == pytest.approx(expected[k], rel=1e-3)
    n_tables = sum(
        1
        for k in expected
        if k[2] in TABLE_METRICS and (k[3] == "value") == (k[2] in SCALAR_TABLE_METRICS)
    )
    # + the cost table: 4 seconds per arm of each held-out condition
    n_cost = sum(
        1
        for k in expected
        if k[2] in ("computation_time_s", "train_s", "infer_s", "refine_s")
        and k[0].endswith("/test")
        and k[3] == "value"
    )
    assert len(cells) == n_tables + n_cost


def test_failures_show_escaped_error_and_log_tail(failed_run, ok_run):
    html_text = failed_run["html"]
    fail = _section(html_text, "failures")
    assert "compare crashed: &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in fail
    assert html_text.lower().count("<script") == 1  # the metric selector's, not the message
    # last log lines appear (escaped); lines older than the ~20-line tail do not
    jid = "compare.dose_100000.sparse.test"
    assert "Traceback: ValueError: &lt;boom&gt; &amp; friends" in fail
    assert f"{jid} line 29 &lt;tag&gt;" in fail
    assert f"{jid} line 5 &lt;tag&gt;" not in fail
    assert "dose_100000/sparse/test" in fail  # listed as a missing comparison
    assert "reconstruction has non-finite values" in fail  # the arm that could not be scored
    headline = re.search(r'<div id="headline">(.*?)</div>', html_text, re.S).group(1)
    assert "1 of 8 comparisons failed" in headline
    ok_headline = re.search(r'<div id="headline">(.*?)</div>', ok_run["html"], re.S).group(1)
    assert "All 8 comparisons succeeded" in ok_headline
    assert re.search(r"<p>None</p>", _section(ok_run["html"], "failures"))


def test_text_sections_are_escaped_and_complete(ok_run):
    text = ok_run["html"]
    design = _section(text, "design")
    assert "name = &quot;fake &amp; &lt;tiny&gt;&quot;" in design
    assert "<tiny>" not in text
    summary = _section(text, "summary")
    assert "line two &lt;b&gt;" in summary and "PtychoPINN wins phase SSIM" in summary
    assert "PtychoPINN − Baseline" in summary and "+0.100 [+0.050, +0.150]" in summary
    env = _section(text, "environment")
    assert "Linux &lt;x86_64&gt;" in env and "2.11.0" in env
    overlap = _section(text, "overlap")
    assert overlap.count("<tr>") == 1 + len(CONDITIONS)
    assert "0.61" in overlap and "n/a (gridsize 1)" in overlap


def test_design_description_is_said_on_top_in_words(ok_run, failed_run):
    text = ok_run["html"]
    head, _, rest = text.partition("<nav>")
    assert head.index("<h1>") < head.index('<p id="purpose">')
    assert '<p id="purpose">Networks are a &lt;smoke&gt; test &amp; nothing more</p>' in head
    assert 'id="purpose"' not in rest
    # no description in the design: no paragraph
    assert 'id="purpose"' not in failed_run["html"]


def test_timings_sum_the_manifest(ok_run):
    jobs = ok_run["manifest"]["jobs"]
    timings = _section(ok_run["html"], "timings")
    page = _parse(timings)
    rows = re.findall(r"<tr>(.*?)</tr>", timings, re.S)
    compare_row = next(r for r in rows if '<td class="text">compare</td>' in r)
    nums = re.findall(r"<td>([^<]*)</td>", compare_row)
    compare_jobs = [j for j in jobs.values() if j["kind"] == "compare"]
    assert int(nums[0]) == len(compare_jobs)
    assert float(nums[2]) == pytest.approx(sum(j["seconds"] for j in compare_jobs))
    assert float(nums[4]) == max(j["peak_rss_mb"] for j in compare_jobs)
    total = next(r for r in rows if r.startswith('<th class="text">total</th>'))
    tnums = re.findall(r"<td>([^<]*)</td>", total)
    assert int(tnums[0]) == len(jobs)
    assert float(tnums[2]) == pytest.approx(sum(j["seconds"] or 0 for j in jobs.values()))
    assert page.problems == []


def test_rewrite_is_byte_identical(ok_run):
    before = {p: p.read_bytes() for p in ok_run["paths"]}
    again = write_report(ok_run["run"])
    assert again == ok_run["paths"]
    for p in again:
        assert p.read_bytes() == before[p], p.name
    assert b"Software" not in before[ok_run["paths"][0]]


def test_dose_response_has_one_panel_column_per_view_split(ok_run, tmp_path):
    from ptychobench.study.report import DOSE_RESPONSE_ROWS, _read_metrics_long

    rows = _read_metrics_long(ok_run["run"] / "analysis" / "metrics_long.csv")
    conds = ok_run["manifest"]["conditions"]
    fig = dose_response_plot(rows, tmp_path / "dr.png", conds)
    pairs = [(v, s) for v in VIEWS for s in SPLITS]
    assert len(fig.axes) == len(DOSE_RESPONSE_ROWS) * len(pairs)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"{v} / {s}" for v, s in pairs]
    ax = fig.axes[0]  # phase SSIM, first (view, split)
    assert ax.get_xscale() == "log"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == set(ARMS)
    assert lines["Flat"].get_linestyle() == "--" and lines["PtychoPINN"].get_linestyle() == "-"
    v, s = pairs[0]
    want = [ok_run["expected"][(_key(d, v, s), "PtychoPINN", "ssim", "phase")] for d in DOSES]
    assert list(lines["PtychoPINN"].get_xdata()) == list(DOSES)
    assert list(lines["PtychoPINN"].get_ydata()) == want
    assert (tmp_path / "dr.png").read_bytes() == (
        ok_run["run"] / "analysis" / "dose_response.png"
    ).read_bytes()


def test_montage_rows_titles_and_missing_condition(failed_run, tmp_path):
    conds = failed_run["manifest"]["conditions"]
    fig = montage(failed_run["run"], 100000.0, conds, tmp_path / "m.png")
    n_conds = sum(1 for c in conds if c["dose"] == 100000.0)
    # truth + 4 arms, phase and amplitude rows, for each condition that has a comparison
    assert sum(bool(ax.images) for ax in fig.axes) == 2 * (n_conds - 1) * (1 + len(ARMS))
    assert all(
        ax.images[0].get_clim() == fig.axes[0].images[0].get_clim()
        for ax in fig.axes[: 1 + len(ARMS)]
    )  # one colour scale per row
    titles = [ax.get_title() for ax in fig.axes]
    want = failed_run["expected"][(_key(100000.0, "dense", "test"), "Baseline", "ssim", "phase")]
    assert f"Baseline\nphase SSIM {want:.3g}" in titles
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("sparse/test: comparison missing" in t for t in texts)
    # a dose with an unscorable arm still draws; its column says so
    fig0 = montage(failed_run["run"], 1000.0, conds, tmp_path / "m0.png")
    assert any(t.get_text() == "failed" for ax in fig0.axes for t in ax.texts)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


_CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
)

# Appended to a copy of the page only: a real browser says whether each <img> decoded.
_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-probe", ok + "/" + imgs.length);
});
</script>"""


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (.ci/run installs it)")
def test_chromium_renders_verdict_images_and_a_non_blank_first_screen(ok_run, tmp_path):
    import matplotlib.image as mpimg

    exe = _chromium()
    page = ok_run["run"] / "analysis" / "report.html"
    probe = tmp_path / "probe.html"
    probe.write_text(ok_run["html"].replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    proc = subprocess.run(
        [exe, *_CHROMIUM_FLAGS, *profile, "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'id="failures"' in dom and '<table id="verdict"' in dom
    n_imgs = len(_parse(ok_run["html"]).imgs)
    assert f'data-probe="{n_imgs}/{n_imgs}"' in dom  # every image decoded in the browser
    # the verdict grid: one row per dose, one cell per view, each naming an arm and a margin
    grid = dom[dom.index('<table id="verdict"') :]
    grid = grid[: grid.index("</table>")]
    assert grid.count("data-arm=") == len(DOSES) * len(VIEWS)
    shot = tmp_path / "first_screen.png"
    proc = subprocess.run(
        [exe, *_CHROMIUM_FLAGS, *profile, "--window-size=1400,900", f"--screenshot={shot}",
         page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    px = mpimg.imread(shot)
    assert px.shape[:2] == (900, 1400)
    assert float(px[..., :3].var()) > 1e-3  # not a blank (single-colour) screen


def test_page_opens_with_the_verdict_and_collapses_the_long_sections(ok_run):
    from ptychobench.study.aggregate import VERDICT_METRICS, verdicts

    html = ok_run["html"]
    first = html.index('<section id="verdict-section">')
    for sid in ("design", "overlap", "tables", "montages", "timings", "environment"):
        start = html.index(f'<section id="{sid}">')
        assert start > first
        assert html[start : start + 200].split("\n")[1].startswith("<details>"), sid
    assert html.index('<table id="verdict"') < html.index('<section id="design">')
    # one sentence per view, naming a dose and an arm
    sentences = re.findall(r'<ul id="verdict-sentences">(.*?)</ul>', html, re.S)[0]
    assert sentences.count("<li>") == len(VIEWS)
    assert "at 1e3 photons" in sentences and "at 1e5 photons" in sentences
    # every grid cell (each metric tab) carries the recomputed winner and margin
    rows = []
    with open(ok_run["run"] / "analysis" / "metrics_long.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            row = {k: r[k] for k in ("view", "split", "model", "metric")}
            row["dose"], row["repeat"] = float(r["dose"]), int(r.get("repeat") or 0)
            for part in ("amplitude", "phase", "value"):
                try:
                    row[part] = float(r[part])
                except ValueError:
                    row[part] = None if r["metric"] != "error" else r[part]
            rows.append(row)
    want = {
        (v["view"], repr(float(v["dose"])), v["metric"], v["part"]): v for v in verdicts(rows)
    }
    page = _parse(html)
    cells = [a for a, _ in page.cells if "data-margin" in a]
    assert len(cells) == len(VERDICT_METRICS) * len(DOSES) * len(VIEWS)
    for a in cells:
        v = want[(a["data-view"], a["data-dose"], a["data-metric"], a["data-part"])]
        assert a["data-arm"] == (v["arm"] or "")
        assert a["data-margin"] == ("" if v["margin"] is None else repr(float(v["margin"])))
    # one repeat: a winner in every scored cell, never a tie, and the page says why
    assert all(a["data-arm"] != "tie" for a in cells)
    assert "one repeat" in html


def test_frc_cut_offs_are_given_in_nm_when_the_data_carry_a_geometry(tmp_path):
    from ptychobench.study.report import _render_macro, _resolution_data, object_pixel_m

    def _resolution_html(run_dir, agg, models):
        return _render_macro("resolution", _resolution_data(run_dir, agg, models))

    agg = {
        "PtyChi": {"frc50": {"mean_phase": 0.25, "mean_amplitude": 0.5}},
        "Flat": {"frc50": {"mean_phase": None, "mean_amplitude": 0.02}},
    }
    assert object_pixel_m(tmp_path) is None
    assert "cycles/px only" in _resolution_html(tmp_path, agg, ["PtyChi", "Flat"])
    cmp = tmp_path / "compare" / "dose_1000" / "dense" / "test"
    cmp.mkdir(parents=True)
    (cmp / "metrics.json").write_text(json.dumps({"settings": {"object_pixel_size_m": 58.7e-9}}))
    assert object_pixel_m(tmp_path) == pytest.approx(58.7e-9)
    html = _resolution_html(tmp_path, agg, ["PtyChi", "Flat"])
    page = _parse(html)
    assert page.problems == [] and page.stack == []
    assert "object pixel 58.7 nm" in html and "117.4 nm" in html  # Nyquist = 2 pixels
    cells = [text for _, text in page.cells]
    # 0.25 cycles/px → a 4-pixel period = 234.8 nm; 0.5 → 117.4 nm; 0.02 → 2935 nm
    assert cells[:5] == ["PtyChi", "0.25", "234.8", "0.5", "117.4"]
    assert cells[5] == "Flat" and cells[8:] == ["0.02", "2935"]


@pytest.mark.parametrize(
    "metric, best, floor, words",
    [
        ("ssim", 0.135, 0.137, "below the constant-object floor (X 0.135 vs the floor 0.137)"),
        ("nrmse", 0.92, 0.90, "worse than the constant-object floor (X 0.920 vs the floor 0.900)"),
    ],
)
def test_a_best_arm_below_the_floor_is_said_arm_first(metric, best, floor, words):
    from ptychobench.study.report import _verdict_phrase

    v = {
        "dose": 1000.0, "metric": metric, "part": "phase", "leader": "X", "runner_up": "Y",
        "margin": 0.004, "ci95_low": None, "ci95_high": None, "tie": None,
        "means": {"X": best, "Y": best - 0.004 if metric == "ssim" else best + 0.004},
        "floor": floor,
    }
    text = _verdict_phrase(v)
    assert text.endswith(words), text
    # above the floor nothing is added
    v["floor"] = best - 0.1 if metric == "ssim" else best + 0.1
    assert "floor" not in _verdict_phrase(v)
