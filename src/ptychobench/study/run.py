"""Run a study: the local and Dask executors, the manifest, resume, filters, clobber.

``manifest.json`` (run-relative paths)::

    {"format": "ptychobench-study-manifest/1", "design": {...}, "design_sha256": "...",
     "planned": [job ids, excluding "verify"],
     "conditions": [{"dose", "view", "split", "repeat"}],
     "repeats": [{"repeat", "seeds": {"object", "scan", "noise", "grouping", "training"}}],
     "jobs": {id: {"kind", "dose", "view", "split", "repeat"?, "deps", "key", "status", "seconds",
                   "peak_rss_mb", "peak_gpu_mb" (None without CUDA), "log", "outputs":
                   {path: sha256}, "error", "finished_at"}},
     "runs": [{"started_at", "finished_at", "executor", "only", "n_run", "n_skipped",
               "n_failed", "n_blocked"}],
     "environment": {...}}

Status is one of ``success``, ``failed``, ``blocked`` (a dependency failed) or ``pending``. The
manifest is rewritten atomically after every job and merged across runs: a partial run (``--only``
or a crash) never drops the records of jobs it did not touch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ptychobench.arms.registry import describe
from ptychobench.data.io import WriteFailed, as_write_failure, atomic_open
from ptychobench.study.design import StudyDesign, design_from_dict
from ptychobench.study.feasibility import check_design
from ptychobench.study.feasibility import summary as feasibility_summary
from ptychobench.study.jobs import (
    STAGING,
    Job,
    JobFailed,
    conditions,
    execute,
    job_key,
    output_hashes,
    plan,
    planned_arms,
    publish,
    staged_complete,
    staging_dir,
)
from ptychobench.study.lock import LOCK, run_lock
from ptychobench.study.stop import Stopped, stop_on_signals

__all__ = [
    "StudyError",
    "StudyResult",
    "run_study",
    "report_study",
    "verify_study",
    "parse_only",
    "MANIFEST",
]

log = logging.getLogger(__name__)

#: a Dask job's log, inside its staging until the driver moves it to the job's ``log`` path
REMOTE_LOG = ".job.log"

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "ptychobench-study-manifest/1"
ONLY_KEYS = ("dose", "view", "split", "repeat", "arm")


class StudyError(ValueError):
    """A study that cannot start (bad run directory, bad filter, executor unavailable)."""


@dataclasses.dataclass
class StudyResult:
    """What a run did: job ids per outcome, and where to look when something failed."""

    run_dir: Path
    ran: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    blocked: list[str] = dataclasses.field(default_factory=list)
    logs: dict[str, str] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.blocked)

    def failure_summary(self) -> list[str]:
        """A few console lines (each ≤ :data:`MAX_LINE` characters): how many jobs failed and
        were blocked, the first failure's one-line cause and its log, where the full list is."""
        head = f"{len(self.failed)} job(s) failed, {len(self.blocked)} blocked"
        lines = []
        if self.failed:
            first = self.failed[0]
            lines.append(f"{head}; first: {first}: {one_line(self.errors.get(first, ''))}")
            if first in self.logs:
                lines.append(f"its log: {self.run_dir / self.logs[first]}")
        else:
            lines.append(head)
        where = f"every job's status and error: {self.run_dir / MANIFEST}"
        if (self.run_dir / "analysis" / "report.html").exists():
            where += f" and {self.run_dir / 'analysis' / 'report.html'}"
        lines.append(where)
        return [clip(line) for line in lines]


MAX_LINE = 300
"""Longest console line the study prints; full texts stay in the manifest and the logs."""


def one_line(text: str, limit: int = 160) -> str:
    """The first line of ``text``, cut to ``limit`` characters (with an ellipsis)."""
    first = (text or "").strip().splitlines()
    return clip(first[0] if first else "", limit)


def clip(text: str, limit: int = MAX_LINE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------------------------------
# small utilities


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _design_sha(design: StudyDesign) -> str:
    return hashlib.sha256(design.model_dump_json().encode()).hexdigest()


def environment(design: StudyDesign) -> dict[str, Any]:
    """Versions and the device, for the report."""
    import numpy
    import torch

    try:
        from importlib.metadata import version

        ptychi = version("ptychi")
    except Exception:  # pty-chi missing is reported by its arm, not here
        ptychi = "not installed"
    cuda = torch.cuda.is_available()
    device = design.device if design.device != "auto" else ("cuda" if cuda else "cpu")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "ptychi": ptychi,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": design.num_threads or torch.get_num_threads(),
    }


def read_manifest(run_dir: Path) -> dict[str, Any]:
    p = run_dir / MANIFEST
    if not p.exists():
        return {}
    # Our own writes are atomic, so a torn or odd manifest was cut short by another tool or
    # edited by hand. It is the only record of which outputs are proven (their hashes and keys):
    # nothing in it is trusted past what can be checked, and what cannot be is refused.
    what_to_do = ("it is this run's record of which outputs are proven; restore it, or use "
                  "--clobber to archive the run and start over")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        why = "empty" if not p.stat().st_size else f"torn or not JSON: {exc}"
        raise StudyError(f"{p}: {why}; {what_to_do}") from None
    if not isinstance(doc, dict):
        raise StudyError(
            f"{p}: expected a JSON object, found {type(doc).__name__}; {what_to_do}"
        )
    if doc.get("format") != MANIFEST_FORMAT:
        raise StudyError(
            f"{p}: key 'format': expected {MANIFEST_FORMAT!r}, found {doc.get('format')!r}; "
            f"{what_to_do}"
        )
    for key, kind in (("jobs", dict), ("runs", list), ("planned", list)):
        if key in doc and not isinstance(doc[key], kind):
            raise StudyError(
                f"{p}: key {key!r}: expected a JSON {'object' if kind is dict else 'array'}, "
                f"found {type(doc[key]).__name__}; {what_to_do}"
            )
    return doc


def _drop_untrusted(manifest: dict[str, Any], jobs: list[Job]) -> None:
    """Job records this design cannot use are set aside with a warning, never used silently:
    a record that is not an object (dropped: the job re-runs) and ids not in the plan (kept for
    a later design that plans them again, e.g. an arm switched off and on, but ignored)."""
    records = manifest.get("jobs", {})
    bad = [jid for jid, rec in records.items() if not isinstance(rec, dict)]
    for jid in bad:
        del records[jid]
    if bad:
        log.warning("%s: %d job record(s) are not JSON objects and are dropped (those jobs "
                    "re-run): %s", MANIFEST, len(bad), ", ".join(bad[:5]))
    planned = {j.id for j in jobs}
    unknown = [jid for jid in records if jid not in planned]
    if unknown:
        log.warning("%s: %d job record(s) name jobs this design does not plan and are ignored: "
                    "%s", MANIFEST, len(unknown), ", ".join(sorted(unknown)[:5]))


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    with atomic_open(run_dir / MANIFEST, "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True, allow_nan=False, default=str)


def parse_only(text: str | None) -> dict[str, Any]:
    """``"dose=1000,view=dense,split=test"`` → ``{"dose": 1000.0, "view": "dense", ...}``."""
    if not text:
        return {}
    out: dict[str, Any] = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if not sep or k not in ONLY_KEYS or not v:
            raise StudyError(
                f"--only: expected comma-separated key=value with keys {ONLY_KEYS}, found {part!r}"
            )
        if k == "dose":
            try:
                out[k] = float(v)
            except ValueError:
                raise StudyError(f"--only: dose: expected a number, found {v!r}") from None
        elif k == "repeat":
            if not v.isdigit():
                raise StudyError(f"--only: repeat: expected an integer >= 0, found {v!r}")
            out[k] = int(v)
        else:
            out[k] = v
    return out


def select(jobs: list[Job], only: dict[str, Any], design: StudyDesign) -> list[Job]:
    """Jobs matching ``only`` plus everything they need; closing jobs only for a full run."""
    if not only:
        return jobs
    if "dose" in only and only["dose"] not in design.doses:
        raise StudyError(f"--only dose: expected one of {design.doses}, found {only['dose']}")
    if "view" in only and only["view"] not in design.views:
        raise StudyError(
            f"--only view: expected one of {list(design.views)}, found {only['view']!r}"
        )
    if "repeat" in only and not 0 <= only["repeat"] < design.repeats:
        raise StudyError(
            f"--only repeat: expected 0 to {design.repeats - 1} (repeats = {design.repeats}), "
            f"found {only['repeat']}"
        )
    if "arm" in only and only["arm"] not in design.arm_objects():
        raise StudyError(
            f"--only arm: expected one of {list(design.arm_objects())}, found {only['arm']!r}"
        )
    if "split" in only and only["split"] not in ("train", "test"):
        raise StudyError(f"--only split: expected train or test, found {only['split']!r}")
    by_id = {j.id: j for j in jobs}
    wanted = {
        j.id
        for j in jobs
        if not j.final and all(getattr(j, k) is None or getattr(j, k) == v for k, v in only.items())
    }
    stack = list(wanted)
    while stack:
        job = by_id[stack.pop()]
        for d in job.deps:
            if "arm" in only and d in job.soft:
                continue  # one arm: the comparisons read the others' outputs as they are
            if d not in wanted:
                wanted.add(d)
                stack.append(d)
    return [j for j in jobs if j.id in wanted]


# ----------------------------------------------------------------------------------------------
# per-job execution, shared by both executors


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux ≥ 4.0)


def _reset_peak_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gpu_mb() -> float | None:
    """Peak GPU memory allocated by torch since :func:`_reset_peak_gpu` (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _peak_rss_mb() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@contextlib.contextmanager
def _job_log(path: Path, listener: logging.Handler | None = None) -> Iterator[None]:
    """Route every log record (and warning) to the job's log file while it runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(path, mode="w", encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    # the file wants INFO; the console handlers already there keep their old threshold
    quiet = [(h, h.level) for h in root.handlers if h.level < old_level]
    for h, _ in quiet:
        h.setLevel(old_level)
    # and the console proper (the CLI's stream handler) says nothing while a job runs: its
    # warnings and tracebacks are in the job's log, its failure is one line of the display
    console = [h for h in root.handlers if type(h) is logging.StreamHandler]
    for h in console:
        h.addFilter(_mute)
    root.setLevel(min(old_level, logging.INFO))
    root.addHandler(fh)
    if listener is not None:
        root.addHandler(listener)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(fh)
        if listener is not None:
            root.removeHandler(listener)
        root.setLevel(old_level)
        for h, lv in quiet:
            h.setLevel(lv)
        for h in console:
            h.removeFilter(_mute)
        fh.close()


def _mute(record: logging.LogRecord) -> bool:
    return False


def _outputs_intact(run_dir: Path, job: Job, record: dict[str, Any]) -> bool:
    recorded = record.get("outputs") or {}
    if not recorded:
        return False
    try:
        return output_hashes(run_dir, job) == recorded
    except OSError:
        return False


def _new_record(job: Job) -> dict[str, Any]:
    """A job's manifest record before it runs (closing jobs have no dose/view/split)."""
    return {
        "kind": job.kind,
        **job.params(),
        "deps": list(job.deps),
        "log": job.log,
        "key": None,
        "status": "pending",
        "seconds": None,
        "peak_rss_mb": None,
        "peak_gpu_mb": None,
        "outputs": {},
        "error": None,
        "finished_at": None,
    }


def _dep_state(record: dict[str, Any]) -> dict[str, Any]:
    """What a dependency contributes to a job's key: its output hashes; for a soft dependency
    that did not succeed, its status and error (so a fix re-runs the job that read it)."""
    if record.get("status") == "success":
        return record.get("outputs") or {}
    return {"status": record.get("status"), "error": record.get("error")}


def run_one(
    job: Job,
    design: StudyDesign,
    run_dir: Path,
    prior: dict[str, Any] | None,
    deps: dict[str, dict[str, Any]],
    listener: logging.Handler | None = None,
    *,
    remote: bool = False,
) -> dict[str, Any]:
    """Run (or skip) one computing job and return its manifest record.

    ``deps`` are the records of the job's dependencies; ``prior`` the job's record from an
    earlier run. A job whose dependency did not succeed is ``blocked``. ``remote`` (a Dask
    worker): the outputs stay in the job's staging directory and the record says, under
    ``"staged"``, whether the driver is to publish them (:func:`_adopt`).
    """
    record = _new_record(job)
    prior = prior if isinstance(prior, dict) else None
    bad = [
        d for d in job.deps if d not in job.soft and deps.get(d, {}).get("status") != "success"
    ]
    if bad:
        record.update(status="blocked", error=f"dependency did not succeed: {', '.join(bad)}")
        return record
    key = job_key(job, design, {d: _dep_state(deps.get(d, {})) for d in job.deps})
    record["key"] = key
    if (
        prior
        and prior.get("status") == "success"
        and prior.get("key") == key
        and _outputs_intact(run_dir, job, prior)
    ):
        # what the job is comes from the plan, not from the (possibly hand-edited) record
        identity = {k: record[k] for k in ("kind", *job.params(), "deps", "log")}
        return {**prior, **identity, "skipped": True}
    import torch

    threads = design.num_threads
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    _reset_peak_rss()
    _reset_peak_gpu()
    t0 = time.perf_counter()
    publishable = False
    # a worker writes only inside its job's staging, its log too; the driver moves it (_adopt)
    log_path = staging_dir(run_dir, job, key) / REMOTE_LOG if remote else run_dir / job.log
    with _job_log(log_path, listener):
        log.info("%s: start (key %s)", job.id, key[:12])
        try:
            execute(job, design, run_dir, key, publish_outputs=not remote)
            record["status"] = "success"
            publishable = True
        except (KeyboardInterrupt, Stopped) as exc:
            # abandoned, not failed: no record is written, and a resume starts this job afresh
            log.error("%s: %s; its staging is removed", job.id, exc or "interrupted")
            shutil.rmtree(run_dir / STAGING / job.id, ignore_errors=True)
            raise
        except (JobFailed, WriteFailed) as exc:
            record.update(status="failed", error=str(exc))
            log.error("%s: %s", job.id, exc)
            publishable = isinstance(exc, JobFailed)
        except Exception as exc:
            if (failure := as_write_failure(exc)) is not None:  # a full disk, in a library's write
                record.update(status="failed", error=str(failure))
                log.error("%s: %s", job.id, failure)
            else:
                record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                log.error("%s failed:\n%s", job.id, traceback.format_exc())
        finally:
            if threads:
                torch.set_num_threads(prev_threads)
        record["seconds"] = round(time.perf_counter() - t0, 3)
        record["peak_rss_mb"] = _peak_rss_mb()
        record["peak_gpu_mb"] = _peak_gpu_mb()
        log.info("%s: %s in %.1f s", job.id, record["status"], record["seconds"])
    if remote:
        record["staged"] = publishable and staged_complete(run_dir / STAGING / job.id, job)
        if record["status"] == "success" and not record["staged"]:
            record.update(status="failed", error=f"{job.id}: an expected output was not produced")
    elif record["status"] == "success" or all((run_dir / o).exists() for o in job.outputs):
        record["outputs"] = output_hashes(run_dir, job)
    record["finished_at"] = _now()
    return record


def _run_remote(
    job: Job, design_doc: dict[str, Any], run_dir: str, prior: dict | None, deps: dict
) -> dict[str, Any]:
    """Dask task: the same :func:`run_one`, writing only inside the job's staging directory.

    ``deps`` are the dependencies' records as the driver published them: a job is submitted
    only once every dependency it reads is in the run directory.
    """
    design = design_from_dict(design_doc)
    return run_one(job, design, Path(run_dir), prior, deps, remote=True)


def _adopt(run_dir: Path, job: Job, record: dict[str, Any]) -> dict[str, Any]:
    """On the driver: publish what a worker staged and hash it into the job's record."""
    staged_log = run_dir / STAGING / job.id / REMOTE_LOG
    if staged_log.exists():
        (run_dir / job.log).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged_log, run_dir / job.log)
    if not record.pop("staged", False):
        return record
    try:
        publish(run_dir, run_dir / STAGING / job.id, job)
        record["outputs"] = output_hashes(run_dir, job)
    except (JobFailed, OSError) as exc:
        failure = as_write_failure(exc) if isinstance(exc, OSError) else exc
        record.update(status="failed", error=str(failure or exc), outputs={})
    return record


# ----------------------------------------------------------------------------------------------
# closing jobs (always run on the driver)


def _final(job: Job, run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    from ptychobench.study import aggregate, report, verify

    record = _new_record(job)
    _reset_peak_rss()
    t0 = time.perf_counter()
    with _job_log(run_dir / job.log):
        try:
            if job.kind == "aggregate":
                jobs = aggregate.compare_jobs_from_manifest(manifest)
                paths = aggregate.aggregate(
                    run_dir,
                    manifest["conditions"],
                    jobs,
                    manifest.get("repeats"),
                    aggregate.lineup_of(manifest),
                )
            elif job.kind == "report":
                paths = report.write_report(run_dir)
            else:
                paths = [verify.write_inventory(run_dir)]
                rep = verify.verify(run_dir)
                paths.append(run_dir / "analysis" / "verification_report.json")
                if not rep["all_valid"]:
                    raise JobFailed("; ".join(verify.failure_lines(run_dir, rep)))
            record["status"] = "success"
        except Exception as exc:
            paths = []
            failure = as_write_failure(exc)
            error = str(failure) if failure is not None else f"{type(exc).__name__}: {exc}"
            record.update(status="failed", error=error)
            log.error("%s failed:\n%s", job.id, traceback.format_exc())
        record["seconds"] = round(time.perf_counter() - t0, 3)
        record["peak_rss_mb"] = _peak_rss_mb()
    from ptychobench.data.io import sha256_file

    record["outputs"] = {
        Path(p).relative_to(run_dir).as_posix(): sha256_file(p) for p in paths if Path(p).is_file()
    }
    record["finished_at"] = _now()
    return record


# ----------------------------------------------------------------------------------------------
# progress display


class _Display:
    """What the console shows while a study runs.

    ``mode`` ``"rich"`` (a TTY): a bar over jobs plus the current job's latest log line;
    ``"plain"`` (not a TTY): a progress line at most every :attr:`every_s` seconds;
    ``"quiet"`` (``--no-progress``): nothing but failures. Every mode prints one short line per
    failed computing job; blocked jobs and failed closing jobs only count (the final summary
    says how many), so one broken dependency does not flood the console.
    """

    every_s = 30.0

    def __init__(self, total: int, mode: str):
        self.mode = mode
        self._last = time.perf_counter()
        self.progress = None
        self.done = 0
        self.total = total
        if mode == "rich":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("jobs", total=total)
            self.current = self.progress.add_task("", total=None)

    def start(self, job_id: str) -> None:
        if self.progress is not None:
            self.progress.update(self.current, description=f"  {job_id}")

    def note(self, msg: str) -> None:
        if self.progress is not None:
            self.progress.update(self.current, description=f"  {msg[:100]}")

    def finish(self, job_id: str, record: dict[str, Any], final: bool = False) -> None:
        """Count the job and print what its mode prints (see the class docstring)."""
        self.done += 1
        if self.progress is not None:
            self.progress.update(self.task, advance=1)
        status = record["status"]
        secs = record.get("seconds")
        shown = "skipped (up to date)" if record.get("skipped") else status
        line = f"[{self.done}/{self.total}] {job_id}: {shown}" + (
            f" in {secs:.1f} s" if secs is not None and not record.get("skipped") else ""
        )
        if status == "failed" and not final:
            line = clip(f"{line}: {one_line(record.get('error') or '')}")
            if self.progress is not None:
                self.progress.console.print(line)
            else:
                print(line, file=sys.stderr, flush=True)
            return
        now = time.perf_counter()
        if self.mode == "plain" and status != "blocked" and now - self._last >= self.every_s:
            self._last = now
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.remove_task(self.current)
            self.progress.stop()


class _Listener(logging.Handler):
    def __init__(self, display: _Display):
        super().__init__(logging.INFO)
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.display.note(f"{record.name.rsplit('.', 1)[-1]}: {record.getMessage()}")


# ----------------------------------------------------------------------------------------------
# the run


def _archive(run_dir: Path) -> Path | None:
    """Move everything in ``run_dir`` (but earlier archives) to ``archive/<UTC time>/``."""
    items = [p for p in run_dir.iterdir() if p.name not in ("archive", LOCK)]
    if not items:
        return None
    dest = run_dir / "archive" / _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    dest.mkdir(parents=True)
    for p in items:
        os.replace(p, dest / p.name)
    return dest


#: Design keys whose edit keeps a run directory's study: the arms and what is said about them
#: (every arm job's key holds its own settings, so exactly the edited arms' jobs re-run).
ARM_KEYS = ("arms", "deltas", "snapshot_every")


def _only_arms_changed(before: Any, design: StudyDesign) -> bool:
    if not isinstance(before, dict):
        return False
    after = design.model_dump(mode="json")
    strip = lambda d: {k: v for k, v in d.items() if k not in ARM_KEYS}  # noqa: E731
    if strip(before) != strip(after):
        return False
    changed = sorted(
        n for n in {*before.get("arms", {}), *after["arms"]}
        if before.get("arms", {}).get(n) != after["arms"].get(n)
    )
    log.info("the design's arms changed (%s): their jobs re-run by key", ", ".join(changed))
    return True


def _prepare(run_dir: Path, design: StudyDesign, design_text: str, clobber: bool) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(run_dir) if not clobber else {}
    if clobber:
        dest = _archive(run_dir)
        if dest is not None:
            log.warning("--clobber: previous outputs archived to %s", dest)
    elif (
        manifest
        and manifest.get("design_sha256") != _design_sha(design)
        and not _only_arms_changed(manifest.get("design"), design)
    ):
        raise StudyError(
            f"{run_dir}: holds a different study (its manifest's design differs from this one): "
            "outputs would be stale; use --clobber to archive them, or another --out"
        )
    elif not manifest:
        _refuse_foreign(run_dir)
    with atomic_open(run_dir / "study.toml", "w") as fh:
        fh.write(design_text)
    jobs = plan(design)
    manifest.update(
        format=MANIFEST_FORMAT,
        design=design.model_dump(mode="json"),
        design_sha256=_design_sha(design),
        planned=[j.id for j in jobs if j.kind != "verify"],
        conditions=conditions(design),
        repeats=design.repeat_records(),
        arms=describe(planned_arms(design)),
        environment=environment(design),
    )
    manifest.setdefault("jobs", {})
    manifest.setdefault("runs", [])
    _drop_untrusted(manifest, jobs)
    return manifest


def _store(result: StudyResult, job: Job, record: dict[str, Any]) -> None:
    if record.get("skipped"):
        result.skipped.append(job.id)
    elif record["status"] == "success":
        result.ran.append(job.id)
    elif record["status"] == "blocked":
        result.blocked.append(job.id)
    else:
        result.failed.append(job.id)
        result.errors[job.id] = record.get("error") or ""
    result.logs[job.id] = job.log


def _local(
    jobs: list[Job],
    design: StudyDesign,
    run_dir: Path,
    manifest: dict,
    display: _Display,
    result: StudyResult,
) -> None:
    listener = _Listener(display) if display.mode == "rich" else None
    for job in jobs:
        if job.final:
            continue
        display.start(job.id)
        deps = {d: manifest["jobs"].get(d, {}) for d in job.deps}
        rec = run_one(job, design, run_dir, manifest["jobs"].get(job.id), deps, listener)
        manifest["jobs"][job.id] = {k: v for k, v in rec.items() if k != "skipped"}
        write_manifest(run_dir, manifest)
        _store(result, job, rec)
        display.finish(job.id, rec)


def _dask(
    jobs: list[Job],
    design: StudyDesign,
    run_dir: Path,
    manifest: dict,
    display: _Display,
    result: StudyResult,
    scheduler: str | None,
    workers: int | None,
) -> None:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:  # pragma: no cover - dask is a dependency
        raise StudyError(f"--executor dask needs dask.distributed: {exc}") from None
    import torch

    cuda = torch.cuda.is_available() and design.device != "cpu"
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except Exception as exc:
            raise StudyError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
    else:
        cluster = LocalCluster(
            n_workers=workers or 2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            resources={"GPU": 1} if cuda else None,
        )
        client = Client(cluster)
    abandoned: list[str] = []
    try:
        _dask_schedule(client, jobs, design, run_dir, manifest, display, result, cuda,
                       as_completed, abandoned)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        # after the workers are gone, so that none writes into a directory being removed
        for job_id in abandoned:
            shutil.rmtree(run_dir / STAGING / job_id, ignore_errors=True)


def _dask_schedule(client, jobs, design, run_dir, manifest, display, result, cuda, as_completed,
                   abandoned: list[str]) -> None:
    """Submit each job once the dependencies it reads are published; publish what returns.

    On a stop (a signal) every job not yet adopted is cancelled and its id appended to
    ``abandoned`` (its staging is removed once the workers are closed); then the stop goes on.
    """
    doc = design.document()
    todo = [j for j in jobs if not j.final]
    ids = {j.id for j in todo}
    finished: set[str] = set()
    live: dict[str, tuple[Job, Any]] = {}
    ac = as_completed()

    def launch() -> None:
        for job in [j for j in todo if all(d not in ids or d in finished for d in j.deps)]:
            todo.remove(job)
            kw = {"resources": {"GPU": 1}} if (cuda and job.gpu) else {}
            deps = {d: manifest["jobs"].get(d, {}) for d in job.deps}
            fut = client.submit(
                _run_remote,
                job,
                doc,
                str(run_dir),
                manifest["jobs"].get(job.id),
                deps,
                key=f"ptychobench-{job.id}-{manifest['design_sha256'][:8]}",
                pure=False,
                **kw,
            )
            live[fut.key] = (job, fut)
            ac.add(fut)
            display.start(job.id)

    try:
        launch()
        for fut in ac:
            job, _ = live[fut.key]
            rec = _adopt(run_dir, job, fut.result())
            del live[fut.key]
            manifest["jobs"][job.id] = {k: v for k, v in rec.items() if k != "skipped"}
            write_manifest(run_dir, manifest)
            finished.add(job.id)
            _store(result, job, rec)
            display.finish(job.id, rec)
            launch()
    except BaseException:
        client.cancel([f for _, f in live.values()], force=True)
        abandoned.extend(job.id for job, _ in live.values())
        raise
    if todo:  # pragma: no cover - the plan is a DAG
        raise StudyError(f"jobs never became ready: {', '.join(j.id for j in todo)}")


def _refuse_foreign(run_dir: Path) -> None:
    """Refuse a directory that holds files but no study (checked before the lock is taken, so a
    refused directory gets no ``.lock``, and again under it)."""
    if run_dir.is_dir() and not (run_dir / MANIFEST).exists() and any(
        p.name not in ("archive", LOCK) for p in run_dir.iterdir()
    ):
        raise StudyError(
            f"{run_dir}: exists, is not empty and has no {MANIFEST}; use --clobber to archive its "
            "contents, or another --out"
        )


def run_study(
    design: StudyDesign,
    run_dir: str | os.PathLike[str],
    *,
    design_text: str,
    executor: str = "local",
    scheduler: str | None = None,
    workers: int | None = None,
    only: dict[str, Any] | None = None,
    clobber: bool = False,
    progress: bool | None = None,
) -> StudyResult:
    """Run (or resume) every job of ``design`` in ``run_dir``.

    Parameters
    ----------
    design : StudyDesign
    run_dir : the run directory (created; see SPEC §8.3 for its layout)
    design_text : the TOML text written to ``RUN/study.toml``
    executor : ``"local"`` (in-process, one job at a time) or ``"dask"``
    scheduler : address of an existing dask.distributed scheduler (dask only)
    workers : start a local dask cluster of this many worker processes (dask only)
    only : ``{"dose": 1000.0, "view": "dense", "split": "test"}`` subset (plus what it needs);
        the closing jobs (aggregate, report, verify) run only for an unfiltered run
    clobber : archive the previous contents of ``run_dir`` to ``run_dir/archive/<time>/``
    progress : rich display (True), failures only (False), or by whether stderr is a TTY (rich,
        else a plain progress line every 30 s)

    Returns
    -------
    StudyResult (``ok`` is False when any job failed or was blocked).
    """
    if executor not in ("local", "dask"):
        raise StudyError(f"--executor: expected 'local' or 'dask', found {executor!r}")
    if executor == "local" and (scheduler or workers):
        raise StudyError("--scheduler/--workers need --executor dask")
    run = Path(run_dir)
    jobs = select(plan(design), only or {}, design)  # a bad filter fails before anything is written
    feasible = check_design(design)  # so does a design its object, probe or scan cannot hold
    for warning in feasible.warnings:
        log.warning("%s", warning)
    if not clobber:
        _refuse_foreign(run)
    with run_lock(run, "study run"):
        return _run_locked(design, run, design_text, executor, scheduler, workers, only,
                           clobber, progress, feasible, jobs)


def _run_locked(design, run, design_text, executor, scheduler, workers, only, clobber, progress,
                feasible, jobs) -> StudyResult:
    manifest = _prepare(run, design, design_text, clobber)
    manifest["plan_check"] = feasibility_summary(feasible)
    result = StudyResult(run_dir=run)
    # recorded up front so a killed run still leaves its trace (finished_at stays null)
    this_run: dict[str, Any] = {
        "started_at": _now(),
        "finished_at": None,
        "executor": executor,
        "only": only or {},
    }
    manifest["runs"].append(this_run)
    write_manifest(run, manifest)
    mode = ("rich" if sys.stderr.isatty() else "plain") if progress is None else (
        "rich" if progress else "quiet"
    )
    display = _Display(len(jobs), mode)
    try:
        with stop_on_signals():
            _execute_all(jobs, design, run, manifest, display, result, executor, scheduler,
                         workers)
    except Stopped as exc:
        this_run["stopped_by"] = signal.Signals(exc.signum).name
        exc.detail = (
            f"{run}: {exc} after {len(result.ran)} jobs ran ({len(result.skipped)} up to date); "
            "the job in flight was abandoned; run the same command to resume"
        )
        raise
    finally:
        display.close()
        this_run.update(
            finished_at=_now(),
            n_run=len(result.ran),
            n_skipped=len(result.skipped),
            n_failed=len(result.failed),
            n_blocked=len(result.blocked),
        )
        write_manifest(run, manifest)
        shutil.rmtree(run / STAGING / "replaced", ignore_errors=True)
    return result


def _execute_all(jobs, design, run, manifest, display, result, executor, scheduler, workers):
    """The computing jobs (locally or on Dask), then the closing jobs on the driver."""
    if executor == "local":
        _local(jobs, design, run, manifest, display, result)
    else:
        _dask(jobs, design, run, manifest, display, result, scheduler, workers)
    for job in jobs:
        if not job.final:
            continue
        display.start(job.id)
        rec = _final(job, run, manifest)
        manifest["jobs"][job.id] = rec
        write_manifest(run, manifest)
        _store(result, job, rec)
        display.finish(job.id, rec, final=True)


def _existing(run_dir: str | os.PathLike[str]) -> tuple[Path, dict]:
    run = Path(run_dir)
    manifest = read_manifest(run) if run.is_dir() else {}
    if not manifest:
        raise StudyError(f"{run}: not a study run directory (no {MANIFEST})")
    return run, manifest


def report_study(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Re-aggregate the finished comparisons and rewrite the report (no recomputation)."""
    run, _ = _existing(run_dir)
    with run_lock(run, "study report"):
        _, manifest = _existing(run)  # read again: a writer may have finished meanwhile
        return _report_locked(run, manifest)


def _report_locked(run: Path, manifest: dict) -> list[Path]:
    from ptychobench.study import verify

    out = []
    for kind in ("aggregate", "report"):
        rec = _final(Job(kind, kind), run, manifest)
        manifest["jobs"][kind] = rec
        write_manifest(run, manifest)
        if rec["status"] != "success":
            raise StudyError(f"{kind} failed: {rec['error']} (log: {run / rec['log']})")
        out += [run / p for p in rec["outputs"]]
    # the regenerated files are the run's artifacts now
    out.append(verify.write_inventory(run))
    return out


def verify_study(run_dir: str | os.PathLike[str], *, record: bool = False) -> dict[str, Any]:
    """Re-check a finished run against its inventory; returns the verification report.

    ``record=False`` (``study verify``): read-only and lock-free, nothing in the run changes.
    ``record=True`` (``study run --post-verify-only``): under the run's lock, writes
    ``analysis/verification_report.json`` and the manifest's ``verify`` record.
    """
    from ptychobench.study import verify

    run, _ = _existing(run_dir)
    if not record:
        return verify.verify(run, write=False)
    with run_lock(run, "study run --post-verify-only"):
        return _verify_locked(run)


def _verify_locked(run: Path) -> dict[str, Any]:
    from ptychobench.study import verify

    _, manifest = _existing(run)
    t0 = time.perf_counter()
    rep = verify.verify(run)
    rec = manifest["jobs"].get("verify", {})
    rec.update(
        kind="verify",
        status="success" if rep["all_valid"] else "failed",
        seconds=round(time.perf_counter() - t0, 3),
        error=None if rep["all_valid"] else f"{rep['n_invalid']} check(s) invalid",
        finished_at=_now(),
        log=rec.get("log", "logs/verify.log"),
    )
    manifest["jobs"]["verify"] = rec
    write_manifest(run, manifest)
    return rep
