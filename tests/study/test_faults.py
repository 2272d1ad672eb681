"""The run directory under faults: a second writer, a dead writer's lock, a full disk at several
points, a file-size limit, torn or edited manifests, SIGTERM / SIGINT.

Every case ends the same way: the run resumed (or left alone) gives a ``metrics_summary.json``
byte-identical to one uninterrupted run of the same design (the module's reference run).
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import resource
import shutil
import signal
import time
import tomllib
from pathlib import Path

import pytest
from studycli import cli, run_to_end

from ptychobench.study.design import design_from_dict
from ptychobench.study.lock import LOCK, RunLocked, holder, run_lock
from ptychobench.study.run import StudyError, report_study, run_study, verify_study

FAULTS = """\
name = "faults"
arms = ["PtychoPINN", "PtyChi"]
doses = [1e4]
device = "cpu"
num_threads = 1

[views.dense]
gridsize = 2
neighbor_count = 5

[simulation]
N = 32
object_size = 80

[pinn]
epochs = 3
n_filters_scale = 0.25

[iterative]
epochs = 8
"""

SUMMARY = Path("analysis/metrics_summary.json")


def _design():
    return design_from_dict(tomllib.loads(FAULTS), source="faults")


_cli = cli


def _files(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def _tmp_files(run: Path) -> list[str]:
    return [p.as_posix() for p in run.rglob("*.tmp*")]


def _wait_for(cond, proc, timeout=300.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _locked(run: Path) -> bool:
    return bool(holder(run).get("pid"))


@pytest.fixture(scope="module")
def toml(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "faults.toml"
    p.write_text(FAULTS)
    return p


@pytest.fixture(scope="module")
def reference(toml, tmp_path_factory):
    """One lone, uninterrupted run through the CLI: the bytes every other case must reproduce."""
    return run_to_end(toml, tmp_path_factory.mktemp("ref") / "run")


def _resume_matches(run: Path, reference: Path) -> dict:
    res = run_study(_design(), run, design_text=FAULTS, progress=False)
    assert res.ok, res.failure_summary()
    assert (run / SUMMARY).read_bytes() == (reference / SUMMARY).read_bytes()
    assert not _tmp_files(run)
    return json.loads((run / "manifest.json").read_text())


# ------------------------------------------------------------------------------ one writer


def test_second_writer_is_refused_and_the_first_is_unaffected(toml, reference, tmp_path):
    run = tmp_path / "run"
    p1 = _cli("study", "run", str(toml), "--out", str(run), "--no-progress")
    assert _wait_for(lambda: _locked(run), p1), "the first run never took the lock"
    p2 = _cli("study", "run", str(toml), "--out", str(run), "--no-progress")
    _, err2 = p2.communicate(timeout=120)
    assert p2.poll() is not None
    still_running = p1.poll() is None
    _, err1 = p1.communicate(timeout=900)
    assert p1.returncode == 0, err1[-3000:]
    assert still_running, "the first run ended before the second was refused"
    assert p2.returncode == 2
    lines = err2.strip().splitlines()
    assert len(lines) == 1, err2
    assert f"in use by pid {p1.pid} on " in lines[0] and "(study run)" in lines[0]
    assert str(run) in lines[0] and "another --out" in lines[0]
    assert (run / SUMMARY).read_bytes() == (reference / SUMMARY).read_bytes()
    man = json.loads((run / "manifest.json").read_text())
    assert len(man["runs"]) == 1  # the refused writer left no trace in the manifest
    assert holder(run) == {}  # a finished writer names nobody


def test_lock_of_a_killed_writer_does_not_block(toml, reference, tmp_path):
    run = tmp_path / "run"
    p1 = _cli("study", "run", str(toml), "--out", str(run), "--no-progress")
    assert _wait_for(lambda: (run / "logs" / "train_pinn.dose_10000.dense.log").exists(), p1)
    p1.send_signal(signal.SIGKILL)
    p1.communicate()
    assert p1.returncode == -signal.SIGKILL
    assert holder(run)["pid"] == p1.pid  # the dead process's record is still there ...
    p2 = _cli("study", "run", str(toml), "--out", str(run), "--no-progress")
    _, err = p2.communicate(timeout=900)
    assert p2.returncode == 0, err[-3000:]  # ... and blocks nobody
    assert (run / SUMMARY).read_bytes() == (reference / SUMMARY).read_bytes()


def test_report_and_post_verify_need_the_lock_and_verify_does_not(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = _files(run)
    with run_lock(run, "study run"):
        with pytest.raises(RunLocked, match=rf"in use by pid {os.getpid()} .*\(study run\)"):
            report_study(run)
        with pytest.raises(RunLocked, match="in use by"):
            verify_study(run, record=True)
        with pytest.raises(RunLocked, match="in use by"):
            run_study(_design(), run, design_text=FAULTS, progress=False)
        rep = verify_study(run)  # read-only: no lock, no write
        assert rep["all_valid"]
        assert {k: v for k, v in _files(run).items() if k != LOCK} == {
            k: v for k, v in before.items() if k != LOCK
        }
    report_study(run)  # free again
    assert verify_study(run, record=True)["all_valid"]


# ------------------------------------------------------------------------ full disk, in-process


def _enospc_at(monkeypatch, pattern: str, nth: int = 1) -> list[str]:
    """Make the ``nth`` fsync of a file whose path matches ``pattern`` fail with ENOSPC — where
    a full disk shows itself on filesystems with delayed allocation. Returns the paths hit."""
    real = os.fsync
    seen: list[str] = []

    def fsync(fd):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if fnmatch.fnmatch(path, pattern):
            seen.append(path)
            if len(seen) == nth:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


@pytest.mark.parametrize(
    "point, pattern, nth, failed_job, final_file",
    [
        ("training checkpoint", "*/.checkpoint.pt.*.tmp", 2, "train_pinn.dose_10000.dense",
         "checkpoint.pt"),
        ("reconstruction", "*/iterative/dose_10000/dense/test/.recon.npz.*.tmp", 1,
         "iterative.dose_10000.dense.test", "iterative/dose_10000/dense/test/recon.npz"),
        ("aggregate", "*/analysis/.metrics_summary.json.*.tmp", 1, "aggregate",
         "analysis/metrics_summary.json"),
        ("report", "*/analysis/.report.html.*.tmp", 1, "report", "analysis/report.html"),
    ],
)
def test_a_full_disk_fails_one_job_and_a_resume_is_identical(
    point, pattern, nth, failed_job, final_file, reference, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        hit = _enospc_at(m, pattern, nth)
        res = run_study(_design(), run, design_text=FAULTS, progress=False)
    assert len(hit) >= nth, f"the {point} was never written"
    assert not res.ok and failed_job in res.failed, res.failure_summary()
    err = res.errors[failed_job]
    assert err.startswith("no space left on device while writing "), err
    assert err.endswith(final_file) and ".tmp" not in err
    assert not _tmp_files(run)  # nothing half-written left behind
    if not final_file.endswith("checkpoint.pt"):
        assert not (run / final_file).exists()  # nothing partial published
    man = _resume_matches(run, reference)
    assert man["jobs"][failed_job]["status"] == "success"
    assert man["runs"][-1]["n_skipped"] > 0  # resumed, not restarted


# ------------------------------------------------------------------------ file-size limit, real OS


def _fsize_limit(nbytes: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return preexec


def test_file_size_limit_on_a_child_fails_in_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "x.npz"
    p = _cli(
        "simulate", "--out", str(out), "--n", "32", "--object-size", "80",
        preexec_fn=_fsize_limit(200_000),
    )
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0] == f"error: file too large while writing {out}"
    assert list(tmp_path.iterdir()) == []


def test_study_under_a_file_size_limit_then_resumed_is_identical(toml, reference, tmp_path):
    run = tmp_path / "run"
    p = _cli("study", "run", str(toml), "--out", str(run), "--no-progress",
             preexec_fn=_fsize_limit(1_000_000))  # the 3 MB simulation cannot be written
    _, err = p.communicate(timeout=900)
    assert p.returncode == 1, err[-3000:]
    assert "simulate.dose_10000" in err and "file too large while writing " in err
    assert not _tmp_files(run) and not (run / "data").exists()
    man = _resume_matches(run, reference)
    assert man["runs"][0]["n_failed"] == 2  # the simulation, and the verify of what it left


# ------------------------------------------------------------------------ torn or edited manifest


def _half(text: str) -> str:
    return text[: len(text) // 2]


@pytest.mark.parametrize(
    "case, text, says",
    [
        ("empty", lambda t: "", "manifest.json: empty;"),
        ("truncated", _half, "manifest.json: torn or not JSON:"),
        ("not JSON", lambda t: "{'jobs': }", "manifest.json: torn or not JSON:"),
        ("not an object", lambda t: "[]", "expected a JSON object, found list"),
        ("jobs not an object", lambda t: t.replace('"jobs": {', '"jobs": [{', 1), "torn or not"),
        ("foreign format", lambda t: t.replace("ptychobench-study", "other-tool", 1),
         "key 'format': expected"),
    ],
)
def test_a_torn_manifest_is_refused_in_one_line_and_nothing_changes(
    case, text, says, reference, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    man = run / "manifest.json"
    man.write_text(text(man.read_text()))
    before = _files(run)
    for call in (
        lambda: run_study(_design(), run, design_text=FAULTS, progress=False),
        lambda: report_study(run),
        lambda: verify_study(run),
    ):
        with pytest.raises(StudyError) as info:
            call()
        msg = str(info.value)
        assert "\n" not in msg and says in msg, msg
        assert msg.startswith(str(man)) and "--clobber" in msg
    assert {k: v for k, v in _files(run).items() if k != LOCK} == {
        k: v for k, v in before.items() if k != LOCK
    }


def test_jobs_key_of_the_wrong_type_is_refused_naming_the_key(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    doc = json.loads((run / "manifest.json").read_text())
    doc["jobs"] = list(doc["jobs"])
    (run / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(StudyError, match=r"key 'jobs': expected a JSON object, found list"):
        run_study(_design(), run, design_text=FAULTS, progress=False)


def test_hand_edited_records_are_not_trusted(reference, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    path = run / "manifest.json"
    doc = json.loads(path.read_text())
    jobs = doc["jobs"]
    view = "view.dose_10000.dense.test"
    jobs[view]["outputs"] = {k: "0" * 64 for k in jobs[view]["outputs"]}  # wrong hashes
    jobs["pinn.dose_10000.dense.test"] = "edited by hand"  # not a record
    jobs["compare.dose_10000.dense.test"]["kind"] = "view"  # would drop it from the summary
    jobs["train_pinn.dose_99.dense"] = dict(jobs["train_pinn.dose_10000.dense"])  # not planned
    path.write_text(json.dumps(doc))
    with caplog.at_level("WARNING"):
        res = run_study(_design(), run, design_text=FAULTS, progress=False)
    assert res.ok, res.failure_summary()
    # re-run: what could not be proven, and what reads an output whose bytes changed (the
    # re-inferred PINN records its own seconds); the rest is proven by its hashes
    assert {view, "pinn.dose_10000.dense.test"} <= set(res.ran)
    assert set(res.ran) <= {view, "pinn.dose_10000.dense.test", "compare.dose_10000.dense.test",
                            "halves_pinn.dose_10000.dense.test", "aggregate", "report", "verify"}
    assert {"simulate.dose_10000", "train_pinn.dose_10000.dense",
            "iterative.dose_10000.dense.test"} <= set(res.skipped)
    assert "not JSON objects and are dropped" in caplog.text
    assert "does not plan and are ignored: train_pinn.dose_99.dense" in caplog.text
    got = json.loads(path.read_text())
    assert got["jobs"]["compare.dose_10000.dense.test"]["kind"] == "compare"
    assert (run / SUMMARY).read_bytes() == (reference / SUMMARY).read_bytes()


def test_outputs_deleted_or_altered_by_hand_are_re_run(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "iterative/dose_10000/dense/test/recon.npz").unlink()
    csv = run / "compare/dose_10000/dense/train/comparison_metrics.csv"
    csv.write_text(csv.read_text().replace("PtyChi,", "PtyChi ,", 1))
    res = run_study(_design(), run, design_text=FAULTS, progress=False)
    assert res.ok, res.failure_summary()
    # the re-run reconstruction records its own seconds, so its comparison re-runs too
    assert sorted(res.ran) == sorted(["iterative.dose_10000.dense.test",
                                      "compare.dose_10000.dense.test",
                                      "compare.dose_10000.dense.train", "aggregate", "report",
                                      "verify"])
    assert (run / SUMMARY).read_bytes() == (reference / SUMMARY).read_bytes()


# ------------------------------------------------------------------------------------ signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_and_a_resume_is_identical(sig, toml, reference, tmp_path):
    run = tmp_path / "run"
    job = "train_pinn.dose_10000.dense"
    p = _cli("study", "run", str(toml), "--out", str(run), "--no-progress")
    # mid-training: its staging holds a checkpoint
    assert _wait_for(lambda: list((run / ".staging" / job).rglob("checkpoint.pt")), p)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, err[-3000:]
    name = signal.Signals(sig).name
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {run}: stopped by {name} after ") and "resume" in last
    assert "Traceback" not in err
    assert not (run / ".staging" / job).exists()  # the abandoned job's staging is gone
    assert not _tmp_files(run)
    man = json.loads((run / "manifest.json").read_text())  # consistent, readable
    assert man["runs"][0]["stopped_by"] == name and man["runs"][0]["finished_at"]
    assert job not in man["jobs"]  # abandoned, so not recorded: a resume runs it afresh
    assert all(r["status"] == "success" for r in man["jobs"].values())
    assert holder(run) == {}
    man = _resume_matches(run, reference)
    assert man["runs"][1]["n_skipped"] > 0


def test_dask_sigterm_cancels_its_jobs_and_a_resume_is_identical(toml, reference, tmp_path):
    pytest.importorskip("distributed")
    run = tmp_path / "run"
    job = "train_pinn.dose_10000.dense"
    p = _cli("study", "run", str(toml), "--out", str(run), "--no-progress", "--executor", "dask",
             "--workers", "1")
    assert _wait_for(lambda: list((run / ".staging" / job).rglob("checkpoint.pt")), p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=180)
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"error: {run}: stopped by SIGTERM after ")
    # the worker is gone and the job it was running left nothing behind
    assert not (run / ".staging" / job).exists()
    assert not _tmp_files(run)
    man = json.loads((run / "manifest.json").read_text())
    assert man["runs"][0]["stopped_by"] == "SIGTERM" and job not in man["jobs"]
    assert holder(run) == {}
    man = _resume_matches(run, reference)
    assert man["runs"][1]["n_skipped"] > 0


def test_a_remote_job_writes_only_its_staging_and_the_driver_publishes(reference, tmp_path):
    from ptychobench.study.jobs import STAGING, plan
    from ptychobench.study.run import _adopt, run_one

    design = _design()
    sim = next(j for j in plan(design) if j.kind == "simulate")
    run = tmp_path / "run"
    run.mkdir()
    rec = run_one(sim, design, run, None, {}, remote=True)
    assert rec["status"] == "success" and rec["staged"] is True and rec["outputs"] == {}
    written = {p.relative_to(run).parts[0] for p in run.rglob("*") if p.is_file()}
    assert written == {STAGING}, written  # nothing outside the job's staging, its log included
    assert not any((run / o).exists() for o in sim.outputs)
    rec = _adopt(run, sim, rec)
    assert "staged" not in rec and not (run / STAGING / sim.id).exists()
    assert f"{sim.id}: success" in (run / sim.log).read_text()  # the driver moved the log
    ref = json.loads((reference / "manifest.json").read_text())["jobs"][sim.id]["outputs"]
    assert rec["outputs"] == ref  # the same bytes as the local executor's
