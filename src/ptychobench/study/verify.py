"""Verify a finished study run directory: hashes, parseability, job statuses and consistency.

:func:`write_inventory` records ``sha256  path`` for every artifact of the run in
``analysis/artifact_inventory.txt``; :func:`verify` then runs independent checks and writes
``analysis/verification_report.json``::

    {"all_valid": bool, "n_checks": int, "n_valid": int, "n_invalid": int,
     "checks": [{"name": str, "valid": bool, "detail": str}, ...]}

Checks, in order:

``artifact inventory``        the inventory exists and every line is ``<sha256>  <relative path>``
``artifact hashes``           every listed file exists and has the listed SHA-256
``artifacts parse``           .json/.csv/.npz/.png/.html/.toml/.txt/SHA256SUMS files load
``planned jobs``              every planned job (but ``verify`` itself) has status ``success``
``summary agrees with CSVs``  ``metrics_summary.json`` equals its recomputation from the CSVs
``deltas agree``              ``deltas.json`` and ``verdict.json`` likewise
``highlights agree``          ``highlights.txt`` likewise, line by line
``report agrees``             every ``<td data-value=...>`` metric cell of ``report.html`` equals
                              the CSV value (the mean over repeats); phase SSIM is reported for
                              every test condition/arm; every verdict-grid cell names the arm
                              and margin of ``verdict.json``
``no all-zero or non-finite arm``  every ``<arm>_raw`` is finite and not all zero; no error row
``splits disjoint``           no scan position is in both train.npz and test.npz

A failing check's detail names the offending file (relative to the run directory) and what was
expected versus found. An exception inside a check makes only that check invalid.

The inventory is written by the caller (the study runner, after the report) and only *read* here:
recomputing it inside :func:`verify` would make the hash check vacuous.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np

from ptychobench.data.io import atomic_open, sha256_file
from ptychobench.study.aggregate import (
    CSV_NAME,
    collect_rows,
    compare_dir,
    compare_jobs_from_manifest,
    condition_key,
    deltas,
    highlights_lines,
    lineup_of,
    mean_rows,
    summarise,
    summary_json,
    verdict_document,
    verdicts,
)

__all__ = ["INVENTORY", "REPORT", "verify", "write_inventory"]

INVENTORY = "analysis/artifact_inventory.txt"
REPORT = "analysis/verification_report.json"
MANIFEST = "manifest.json"
#: Paths never inventoried: files that change after (or because of) verification, and logs.
_EXCLUDED_FILES = frozenset({MANIFEST, INVENTORY, REPORT})
_EXCLUDED_TOP_DIRS = frozenset({"logs", "archive"})
_REL_TOL = 1e-12
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
#: How many offenders a detail lists before summarising the rest as a count.
_MAX_LISTED = 20


# --------------------------------------------------------------------------------------------
# inventory
# --------------------------------------------------------------------------------------------


def _included(rel: str) -> bool:
    parts = rel.split("/")
    if rel in _EXCLUDED_FILES or parts[0] in _EXCLUDED_TOP_DIRS:
        return False
    # dot components: atomic-write temp files and staging directories, never final artifacts
    return not any(p.startswith(".") for p in parts)


def _artifact_paths(run_dir: Path) -> list[str]:
    """Relative POSIX paths of every inventoried regular file, sorted."""
    out: list[str] = []
    for root, dirs, files in os.walk(run_dir):
        # prune dot directories early (staging dirs can be large)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            p = Path(root) / name
            rel = p.relative_to(run_dir).as_posix()
            if _included(rel) and p.is_file():
                out.append(rel)
    return sorted(out)


def write_inventory(run_dir: Path) -> Path:
    """Write ``analysis/artifact_inventory.txt``: ``<sha256>  <relative/posix/path>`` per file.

    Parameters
    ----------
    run_dir : Path
        The run directory.

    Returns
    -------
    Path
        The inventory. Lines are sorted by path; ``manifest.json``, ``logs/``, ``archive/``, the
        inventory, ``analysis/verification_report.json`` and any path with a component starting
        with ``.`` (temp files, staging directories) are left out.
    """
    run_dir = Path(run_dir)
    lines = [f"{sha256_file(run_dir / rel)}  {rel}\n" for rel in _artifact_paths(run_dir)]
    path = run_dir / INVENTORY
    with atomic_open(path, "w") as fh:
        fh.write("".join(lines))
    return path


def _read_inventory(run_dir: Path) -> list[tuple[str, str]]:
    """(sha256, relative path) pairs; raises ValueError naming the line on any malformed one."""
    path = run_dir / INVENTORY
    if not path.is_file():
        raise ValueError(f"{INVENTORY}: expected the artifact inventory, found no file")
    entries: list[tuple[str, str]] = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = re.fullmatch(r"([0-9a-f]{64})  (\S.*)", line)
        if m is None:
            raise ValueError(
                f"{INVENTORY}: line {i}: expected '<64 hex sha256>  <path>', found {line[:100]!r}"
            )
        rel = m.group(2)
        parts = rel.split("/")
        # a tampered inventory must not make verify read outside the run directory
        if rel.startswith("/") or ".." in parts or "" in parts:
            raise ValueError(
                f"{INVENTORY}: line {i}: expected a relative path inside the run, found {rel!r}"
            )
        entries.append((m.group(1), rel))
    if not entries:
        raise ValueError(f"{INVENTORY}: expected at least one artifact, found an empty inventory")
    return entries


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _listing(items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = len(items) - len(shown)
    return "; ".join(shown) + (f"; ... and {more} more" if more > 0 else "")


def _read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    if not path.is_file():
        raise ValueError(f"{MANIFEST}: expected the study manifest, found no file")
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"{MANIFEST}: expected a JSON object, found {type(doc).__name__}")
    return doc


def _conditions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    conds = manifest.get("conditions")
    if not isinstance(conds, list):
        raise ValueError(f"{MANIFEST}: key 'conditions': expected a list, found {conds!r}")
    return conds


def _recomputed(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    conds = _conditions(manifest)
    return summarise(
        collect_rows(run_dir, conds),
        compare_jobs_from_manifest(manifest),
        repeats=manifest.get("repeats"),
    )


def _csv_rel(run_dir: Path, dose: float, view: str, split: str, repeat: int = 0) -> str:
    path = compare_dir(run_dir, dose, view, split, repeat) / CSV_NAME
    return path.relative_to(run_dir).as_posix()


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or abs(a - b) <= _REL_TOL * max(abs(a), abs(b))
    return a == b


def _diff(expected: Any, found: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, expected, found) for every leaf where the two JSON values disagree."""
    if isinstance(expected, dict) and isinstance(found, dict):
        for k in sorted(set(expected) | set(found), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k not in found:
                yield sub, expected[k], "<missing>"
            elif k not in expected:
                yield sub, "<absent>", found[k]
            else:
                yield from _diff(expected[k], found[k], sub)
    elif isinstance(expected, list) and isinstance(found, list):
        if len(expected) != len(found):
            yield path, f"{len(expected)} items", f"{len(found)} items"
        for i, (e, f) in enumerate(zip(expected, found, strict=False)):
            yield from _diff(e, f, f"{path}[{i}]")
    elif not _close(expected, found):
        yield path, expected, found


def _load_json(run_dir: Path, rel: str) -> Any:
    path = run_dir / rel
    if not path.is_file():
        raise ValueError(f"{rel}: expected the file, found none")
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# file parsers
# --------------------------------------------------------------------------------------------


def _parse_json(p: Path) -> None:
    json.loads(p.read_text(encoding="utf-8"))


def _parse_csv(p: Path) -> None:
    with open(p, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError("expected a header row, found an empty file")
    width = len(rows[0])
    for i, r in enumerate(rows[1:], 2):
        # every CSV of a run is written by csv.writer with fixed columns: a short row is a
        # truncated or hand-edited file
        if len(r) != width:
            raise ValueError(f"line {i}: expected {width} fields (the header's), found {len(r)}")


def _parse_npz(p: Path) -> None:
    with np.load(p, allow_pickle=False) as f:
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("expected an NPZ archive, found a bare .npy array")
        for key in f.files:
            try:
                f[key]
            except Exception as exc:
                raise ValueError(f"member {key!r}: {exc}") from exc


def _parse_png(p: Path) -> None:
    from PIL import Image

    if p.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("expected the PNG signature, found other bytes")
    with Image.open(p) as im:
        im.load()  # decodes every pixel: raises on truncated/corrupt data


class _TagCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.n_tags = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.n_tags += 1


def _parse_html(p: Path) -> None:
    parser = _TagCounter()
    parser.feed(p.read_text(encoding="utf-8"))
    parser.close()
    if parser.n_tags == 0:
        raise ValueError("expected HTML markup, found no tags")


def _parse_toml(p: Path) -> None:
    tomllib.loads(p.read_text(encoding="utf-8"))


def _parse_text(p: Path) -> None:
    p.read_text(encoding="utf-8")


def _parse_sums(p: Path) -> None:
    """A bundle's ``SHA256SUMS``: every line well-formed and matching its sibling file."""
    for i, line in enumerate(p.read_text(encoding="ascii").splitlines(), 1):
        if not line.strip():
            continue
        m = _SUM_LINE.match(line.strip())
        if m is None:
            raise ValueError(f"line {i}: expected '<sha256>  <name>', found {line[:80]!r}")
        digest, name = m.groups()
        target = p.parent / name
        if not target.is_file():
            raise ValueError(f"line {i}: {name}: expected the file, found none")
        found = sha256_file(target)
        if found != digest:
            raise ValueError(f"{name}: expected sha256 {digest[:12]}…, found {found[:12]}…")


_PARSERS: dict[str, Callable[[Path], None]] = {
    ".json": _parse_json,
    ".csv": _parse_csv,
    ".npz": _parse_npz,
    ".png": _parse_png,
    ".html": _parse_html,
    ".toml": _parse_toml,
    ".txt": _parse_text,
    ".md": _parse_text,
}


def _parser_for(rel: str) -> Callable[[Path], None] | None:
    if rel.rsplit("/", 1)[-1] == "SHA256SUMS":
        return _parse_sums
    return _PARSERS.get(os.path.splitext(rel)[1].lower())


# --------------------------------------------------------------------------------------------
# checks: each returns (valid, detail)
# --------------------------------------------------------------------------------------------

Check = tuple[bool, str]


def _check_inventory(run_dir: Path) -> Check:
    entries = _read_inventory(run_dir)
    return True, f"{INVENTORY}: {len(entries)} artifacts listed"


def _check_hashes(run_dir: Path) -> Check:
    problems = []
    entries = _read_inventory(run_dir)
    for digest, rel in entries:
        p = run_dir / rel
        if not p.is_file():
            problems.append(f"{rel}: expected a file with sha256 {digest[:12]}…, found none")
            continue
        found = sha256_file(p)
        if found != digest:
            problems.append(f"{rel}: expected sha256 {digest[:12]}…, found {found[:12]}…")
    if problems:
        return False, f"{len(problems)} of {len(entries)} artifacts: " + _listing(problems)
    return True, f"{len(entries)} artifacts match {INVENTORY}"


def _check_parse(run_dir: Path) -> Check:
    try:
        rels = [rel for _, rel in _read_inventory(run_dir)]
        source = INVENTORY
    except ValueError:
        # without an inventory, still parse what is on disk (the inventory check reports it)
        rels = _artifact_paths(run_dir)
        source = "the run directory (no usable inventory)"
    problems, n = [], 0
    for rel in rels:
        parser = _parser_for(rel)
        p = run_dir / rel
        if parser is None or not p.is_file():
            continue  # missing files are the hash check's to report
        n += 1
        try:
            parser(p)
        except Exception as exc:
            problems.append(
                f"{rel}: expected a valid {Path(rel).suffix or rel} file, found "
                f"{type(exc).__name__}: {exc}"
            )
    if problems:
        return False, f"{len(problems)} of {n} files do not parse: " + _listing(problems)
    if n == 0:
        return False, f"{source}: expected .json/.csv/.npz/.png/.html artifacts, found none"
    return True, f"{n} files from {source} parse"


def _check_jobs(run_dir: Path) -> Check:
    manifest = _read_manifest(run_dir)
    planned = manifest.get("planned")
    if not isinstance(planned, list) or not planned:
        return False, f"{MANIFEST}: key 'planned': expected a non-empty list, found {planned!r}"
    jobs = manifest.get("jobs", {}) or {}
    bad = []
    explained: list[str] = []
    n = 0
    for jid in planned:
        j = jobs.get(jid)
        # the verify job is running while this check runs: its status cannot be success yet
        if jid == "verify" or (isinstance(j, dict) and j.get("kind") == "verify"):
            continue
        n += 1
        if not isinstance(j, dict):
            bad.append(f"{jid}: expected status success, found no job record in {MANIFEST}")
            continue
        if j.get("status") != "success" and j.get("arm") and j.get("error"):
            # one arm's failure is isolated by design: its cells are marked failed, the other
            # arms are scored; recorded with its reason, it is explained
            explained.append(f"{jid} ({j.get('arm')}): {j.get('status')}: {j.get('error')}")
        elif j.get("status") != "success":
            bad.append(
                f"{jid}: expected status success, found {j.get('status')!r} "
                f"(error: {j.get('error')!r}; log: {j.get('log') or f'logs/{jid}.log'})"
            )
    if bad:
        return False, f"{len(bad)} of {n} planned jobs in {MANIFEST} did not succeed: " + _listing(
            bad
        )
    if explained:
        return True, (
            f"{n - len(explained)} planned jobs succeeded; {len(explained)} jobs of failed arms "
            "are explained (their cells are marked failed): " + _listing(explained)
        )
    return True, f"{n} planned jobs succeeded"


def _describe(run_dir: Path, key: str, summary: dict[str, Any]) -> str:
    """Which CSV(s) a summary key was recomputed from."""
    parts = key.split(".")
    if parts[0] == "by_condition" and len(parts) > 1:
        return f"compare/{parts[1]}/{CSV_NAME}"
    if parts[0] in ("aggregate_metrics", "aggregate_conditions"):
        conds = summary.get("aggregate_conditions", [])
        return ", ".join(f"compare/{c}/{CSV_NAME}" for c in conds) or "the CSVs"
    return f"the CSVs and {MANIFEST}"


def _check_summary(run_dir: Path) -> Check:
    rel = "analysis/metrics_summary.json"
    recomputed = _recomputed(run_dir, _read_manifest(run_dir))
    # round-trip through the canonical JSON so tuples/None compare like the file's content
    expected = json.loads(summary_json(recomputed))
    found = _load_json(run_dir, rel)
    diffs = [
        f"{rel}: {k}: expected {e!r} (recomputed from {_describe(run_dir, k, recomputed)}), "
        f"found {f!r}"
        for k, e, f in _diff(expected, found)
    ]
    if diffs:
        return False, _listing(diffs)
    return True, f"{rel} equals its recomputation from {len(recomputed['by_condition'])} CSVs"


def _check_deltas(run_dir: Path) -> Check:
    manifest = _read_manifest(run_dir)
    rows = collect_rows(run_dir, _conditions(manifest))
    wanted = {
        "analysis/deltas.json": deltas(_recomputed(run_dir, manifest), rows, lineup_of(manifest)),
        "analysis/verdict.json": verdict_document(rows, lineup_of(manifest)),
    }
    diffs = []
    for rel, doc in wanted.items():
        expected = json.loads(summary_json(doc))
        found = _load_json(run_dir, rel)
        diffs += [
            f"{rel}: {k}: expected {e!r} (recomputed from the comparison CSVs), found {f!r}"
            for k, e, f in _diff(expected, found)
        ]
    if diffs:
        return False, _listing(diffs)
    return True, "deltas.json and verdict.json equal their recomputation"


def _check_highlights(run_dir: Path) -> Check:
    rel = "analysis/highlights.txt"
    manifest = _read_manifest(run_dir)
    lineup = lineup_of(manifest)
    expected = highlights_lines(deltas(_recomputed(run_dir, manifest), lineup=lineup), lineup)
    path = run_dir / rel
    if not path.is_file():
        return False, f"{rel}: expected the file, found none"
    found = path.read_text(encoding="utf-8").splitlines()
    diffs = []
    for i in range(max(len(expected), len(found))):
        e = expected[i] if i < len(expected) else "<no line>"
        f = found[i] if i < len(found) else "<no line>"
        if e != f:
            diffs.append(f"{rel}: line {i + 1}: expected {e!r}, found {f!r}")
    if diffs:
        return False, _listing(diffs)
    return True, f"{rel}: {len(found)} lines equal their recomputation"


class _CellParser(HTMLParser):
    """Collects the ``data-*`` attributes of every ``<td data-value=...>`` metric cell."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: list[dict[str, str | None]] = []
        self.verdict_cells: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "td" and "data-value" in a:
            self.cells.append(a)
        if tag == "td" and "data-margin" in a:
            self.verdict_cells.append(a)


def _check_report(run_dir: Path) -> Check:
    rel = "analysis/report.html"
    path = run_dir / rel
    if not path.is_file():
        return False, f"{rel}: expected the report, found none"
    manifest = _read_manifest(run_dir)
    conds = _conditions(manifest)
    raw = collect_rows(run_dir, conds)
    means = mean_rows(raw)  # the report shows means over repeats (the value itself with one)
    # (condition key, model, metric, part) -> CSV value, and the CSV each came from
    values: dict[tuple[str, str, str, str], Any] = {}
    csv_of: dict[str, str] = {}
    for r in means:
        key = condition_key(r["dose"], r["view"], r["split"])
        csv_of[key] = _csv_rel(run_dir, r["dose"], r["view"], r["split"])
        for part in ("amplitude", "phase", "value"):
            values[(key, r["model"], r["metric"], part)] = r[part]
    parser = _CellParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()

    lineup = lineup_of(manifest)
    problems = _verdict_cell_problems(rel, parser.verdict_cells, verdicts(raw, lineup=lineup))
    seen: set[tuple[str, str, str, str]] = set()
    by_condition: dict[str, list[dict]] = {}
    for r in means:
        by_condition.setdefault(condition_key(r["dose"], r["view"], r["split"]), []).append(r)
    for c in parser.cells:
        if "data-budget" in c:
            problems += _budget_cell_problems(run_dir, rel, c, by_condition)
            continue
        ident = (
            str(c.get("data-condition")),
            str(c.get("data-model")),
            str(c.get("data-metric")),
            str(c.get("data-part")),
        )
        label = "/".join(ident)
        dv = (c.get("data-value") or "").strip()
        if ident not in values:
            problems.append(
                f"{rel}: cell {label}: expected a (condition, model, metric, part) "
                f"present in the comparison CSVs, found none"
            )
            continue
        seen.add(ident)
        want = values[ident]
        src = csv_of.get(ident[0], "the comparison CSV")
        if want is None or (isinstance(want, float) and math.isnan(want)):
            ok = dv.lower() in ("", "nan", "none", "null")
        elif isinstance(want, float):
            try:
                ok = float(dv) == want
            except ValueError:
                ok = False
        else:
            ok = dv == str(want)
        if not ok:
            problems.append(
                f"{rel}: cell {label}: expected data-value {want!r} (from {src}), found {dv!r}"
            )
    # The headline table must show phase SSIM for every held-out condition and compared arm
    # that has a number in its CSV (a failed arm has none: that is reported by the arm check).
    for cond in conds:
        if str(cond.get("split")) != "test":
            continue
        key = condition_key(cond["dose"], cond["view"], cond["split"])
        # every verdict candidate of the run: the methods (the references have their own rows)
        for model in lineup.candidates({r["model"] for r in means}):
            want = values.get((key, model, "ssim", "phase"))
            if isinstance(want, float) and (key, model, "ssim", "phase") not in seen:
                problems.append(
                    f"{rel}: expected a cell data-condition={key} data-model={model} "
                    f"data-metric=ssim data-part=phase (value {want!r} in {csv_of[key]}), "
                    f"found none"
                )
    if problems:
        return False, f"{len(problems)} problems: " + _listing(problems)
    return True, f"{rel}: {len(parser.cells)} metric cells equal the comparison CSVs"


def _verdict_cell_problems(rel: str, cells: list[dict], wanted: list[dict]) -> list[str]:
    """Every verdict-grid cell (``data-margin``) must carry the arm and margin of its verdict;
    the grid must have a cell for every verdict of the headline metric."""
    index = {(v["view"], repr(float(v["dose"])), v["metric"], v["part"]): v for v in wanted}
    problems, seen = [], set()
    for c in cells:
        ident = (
            str(c.get("data-view")),
            str(c.get("data-dose")),
            str(c.get("data-metric")),
            str(c.get("data-part")),
        )
        label = "verdict " + "/".join(ident)
        v = index.get(ident)
        if v is None:
            problems.append(f"{rel}: cell {label}: expected a verdict of verdict.json, found none")
            continue
        seen.add(ident)
        margin = "" if v["margin"] is None else repr(float(v["margin"]))
        found = (c.get("data-arm") or "", c.get("data-margin") or "")
        if found != (v["arm"] or "", margin):
            problems.append(
                f"{rel}: cell {label}: expected arm {v['arm']!r} margin {margin!r} "
                f"(recomputed from the comparison CSVs), found {found[0]!r} {found[1]!r}"
            )
    head = [k for k in index if (k[2], k[3]) == ("ssim", "phase") and index[k]["leader"]]
    for k in head:
        if k not in seen:
            problems.append(f"{rel}: expected a verdict-grid cell for {'/'.join(k)}, found none")
    return problems


def _budget_cell_problems(run_dir: Path, rel: str, c: dict, by_condition: dict) -> list[str]:
    """A "best arm within B s" cell must name the best arm the CSVs allow at that budget."""
    from ptychobench.study.report import best_within, cost_points

    key = str(c.get("data-condition"))
    label = f"{key}/within {c.get('data-budget')} s"
    try:
        budget = float(str(c.get("data-budget")))
        value = float(str(c.get("data-value")))
    except ValueError:
        return [f"{rel}: cell {label}: expected numeric data-budget and data-value"]
    best = best_within(cost_points(by_condition.get(key, []), run_dir, key), budget)
    if best is None:
        return [f"{rel}: cell {label}: expected no arm (none fits the budget), found one"]
    arm, _, ph = best
    if c.get("data-arm") != arm or value != ph:
        return [
            f"{rel}: cell {label}: expected {arm} at {ph!r} (from the comparison CSVs and "
            f"convergence.csv), found {c.get('data-arm')} at {value!r}"
        ]
    return []


def _check_costs(run_dir: Path) -> Check:
    """``computation_time_s = infer_s + refine_s`` for every arm that reports both."""
    conds = _conditions(_read_manifest(run_dir))
    problems, n = [], 0
    cost: dict[tuple[str, str], dict[str, float]] = {}
    for r in collect_rows(run_dir, conds):
        if r["metric"] in ("computation_time_s", "infer_s", "refine_s"):
            k = (condition_key(r["dose"], r["view"], r["split"], r["repeat"]), r["model"])
            v = r["value"]
            if isinstance(v, float) and math.isfinite(v):
                cost.setdefault(k, {})[r["metric"]] = v
    for (key, model), c in sorted(cost.items()):
        if {"computation_time_s", "infer_s", "refine_s"} <= set(c):
            n += 1
            total = c["infer_s"] + c["refine_s"]
            if not math.isclose(c["computation_time_s"], total, rel_tol=1e-9, abs_tol=1e-9):
                problems.append(
                    f"{_csv_rel_key(key)}: {model}: expected computation_time_s = infer_s + "
                    f"refine_s = {total!r}, found {c['computation_time_s']!r}"
                )
            if min(c.values()) < 0:
                problems.append(f"{_csv_rel_key(key)}: {model}: expected seconds >= 0, found {c}")
    if problems:
        return False, _listing(problems)
    return True, f"{n} arm costs add up (computation = inference + refinement)"


def _csv_rel_key(key: str) -> str:
    return f"compare/{key}/{CSV_NAME}"


def _failed_arms(manifest: dict[str, Any]) -> set[tuple[str, float, str, int]]:
    """(arm, dose, view, repeat) of every arm job that failed or was blocked, with its reason
    recorded: that arm's error rows there are explained, not hidden."""
    out = set()
    for j in (manifest.get("jobs") or {}).values():
        if isinstance(j, dict) and j.get("arm") and j.get("status") in ("failed", "blocked"):
            if j.get("error") and j.get("dose") is not None:
                out.add((j["arm"], float(j["dose"]), str(j.get("view")), int(j.get("repeat") or 0)))
    return out


def _check_arms(run_dir: Path) -> Check:
    manifest = _read_manifest(run_dir)
    conds = _conditions(manifest)
    failed_arms = _failed_arms(manifest)
    n_explained = 0
    problems = []
    n_arms = 0
    seen: set[str] = set()
    for c in conds:
        dose, view, split = float(c["dose"]), str(c["view"]), str(c["split"])
        repeat = int(c.get("repeat") or 0)
        key = condition_key(dose, view, split, repeat)
        if key in seen:
            continue
        seen.add(key)
        d = compare_dir(run_dir, dose, view, split, repeat)
        rel_npz = (d / "reconstructions.npz").relative_to(run_dir).as_posix()
        rel_csv = _csv_rel(run_dir, dose, view, split, repeat)
        if not (d / "reconstructions.npz").is_file():
            problems.append(f"{rel_npz}: expected the reconstructions, found no file")
        else:
            with np.load(d / "reconstructions.npz", allow_pickle=False) as f:
                raws = [k for k in f.files if k.endswith("_raw")]
                if not raws:
                    problems.append(f"{rel_npz}: expected <arm>_raw arrays, found none")
                for k in raws:
                    n_arms += 1
                    a = f[k]
                    if not np.isfinite(a).all():
                        n_bad = int(a.size - np.isfinite(a).sum())
                        problems.append(
                            f"{rel_npz}: {k}: expected finite values, found {n_bad} NaN/Inf"
                        )
                    elif not np.any(a):
                        problems.append(
                            f"{rel_npz}: {k}: expected a non-zero image, found all zeros {a.shape}"
                        )
        if not (d / CSV_NAME).is_file():
            problems.append(f"{rel_csv}: expected the metrics CSV, found no file")
            continue
        with open(d / CSV_NAME, encoding="utf-8", newline="") as fh:
            for r in csv.DictReader(fh):
                if r.get("metric") == "error" and (
                    (r.get("model"), dose, view, repeat) in failed_arms
                ):
                    n_explained += 1
                elif r.get("metric") == "error":
                    problems.append(
                        f"{rel_csv}: arm {r.get('model')}: expected no error row, found "
                        f"{r.get('value')!r}"
                    )
    if problems:
        return False, f"{len(problems)} problems: " + _listing(problems)
    tail = f"; {n_explained} error rows of failed arms explained" if n_explained else ""
    return True, (
        f"{n_arms} arm reconstructions in {len(seen)} conditions are finite and non-zero{tail}"
    )


def _positions(p: Path) -> set[tuple[float, float]]:
    with np.load(p, allow_pickle=False) as f:
        x = np.asarray(f["xcoords"], np.float64).ravel()
        y = np.asarray(f["ycoords"], np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"xcoords {x.shape} and ycoords {y.shape} differ in length")
    return set(zip(x.tolist(), y.tolist(), strict=True))


def _check_splits(run_dir: Path) -> Check:
    data = run_dir / "data"
    dirs = sorted(data.glob("dose_*")) if data.is_dir() else []
    # the dose-level split and, as a guard against a faulty view step, each view's split
    candidates = []
    for d in dirs:
        candidates.append(d)
        candidates.extend(sorted(p for p in d.iterdir() if p.is_dir()))
    problems, n = [], 0
    for d in candidates:
        train, test = d / "train.npz", d / "test.npz"
        if not (train.is_file() and test.is_file()):
            continue
        n += 1
        shared = _positions(train) & _positions(test)
        if shared:
            rel = d.relative_to(run_dir).as_posix()
            ex = ", ".join(f"({x:g}, {y:g})" for x, y in sorted(shared)[:3])
            problems.append(
                f"{rel}/train.npz and {rel}/test.npz: expected no shared (x, y) "
                f"position, found {len(shared)} (e.g. {ex})"
            )
    if n == 0:
        return False, "data/dose_*/: expected train.npz and test.npz, found no such pair"
    if problems:
        return False, _listing(problems)
    return True, f"{n} train/test pairs share no scan position"


_CHECKS: tuple[tuple[str, Callable[[Path], Check]], ...] = (
    ("artifact inventory", _check_inventory),
    ("artifact hashes", _check_hashes),
    ("artifacts parse", _check_parse),
    ("planned jobs", _check_jobs),
    ("summary agrees with CSVs", _check_summary),
    ("deltas agree", _check_deltas),
    ("highlights agree", _check_highlights),
    ("report agrees", _check_report),
    ("no all-zero or non-finite arm", _check_arms),
    ("costs add up", _check_costs),
    ("splits disjoint", _check_splits),
)


def verify(run_dir: Path, *, write: bool = True) -> dict:
    """Run every check on ``run_dir`` and (``write``) write ``analysis/verification_report.json``.

    Parameters
    ----------
    run_dir : Path
        The run directory (``manifest.json`` at its root; the inventory written beforehand by
        :func:`write_inventory`).

    Returns
    -------
    dict
        ``{"all_valid", "n_checks", "n_valid", "n_invalid", "checks": [{"name", "valid",
        "detail"}]}``, as written. Never raises for a broken run: a check that throws is
        reported invalid with the exception text.
    """
    run_dir = Path(run_dir)
    checks = []
    for name, fn in _CHECKS:
        try:
            valid, detail = fn(run_dir)
        except Exception as exc:
            valid, detail = False, f"{type(exc).__name__}: {exc}"
        checks.append({"name": name, "valid": bool(valid), "detail": detail})
    n_valid = sum(c["valid"] for c in checks)
    report = {
        "all_valid": n_valid == len(checks),
        "n_checks": len(checks),
        "n_valid": n_valid,
        "n_invalid": len(checks) - n_valid,
        "checks": checks,
    }
    if not write:
        return report
    with atomic_open(run_dir / REPORT, "w") as fh:
        json.dump(report, fh, indent=2, sort_keys=True)
        fh.write("\n")
    return report


def failure_lines(run_dir: Path, report: dict, shown: int = 3, limit: int = 300,
                  written: bool = True) -> list[str]:
    """A failed verification in a few lines (each ≤ ``limit`` characters): how many checks are
    invalid, the first ``shown`` with the first line of their detail, and where the rest is
    (``written``: the report file; else the command that writes it)."""
    bad = [c for c in report["checks"] if not c["valid"]]
    lines = [f"{len(bad)} of {report['n_checks']} checks invalid"]
    for c in bad[:shown]:
        detail = (str(c["detail"]).strip().splitlines() or [""])[0]
        lines.append(f"{c['name']}: {detail}")
    rest = f"and {len(bad) - shown} more; " if len(bad) > shown else ""
    if written:
        lines.append(f"{rest}every check's detail: {Path(run_dir) / REPORT}")
    elif rest:
        lines.append(f"{rest}every check's detail: ptychobench study run --post-verify-only "
                     f"--out {run_dir} (writes {Path(run_dir) / REPORT})")
    return [ln if len(ln) <= limit else ln[: limit - 1] + "…" for ln in lines]

