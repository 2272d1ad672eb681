"""Arms as plugins: a command arm and a Python arm beside the built-ins; one broken arm fails
only its own cells (exit, timeout, NaN, wrong shape, raise); a fix re-runs only its jobs; bad
arm input is refused in one line before anything is written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ptychobench.arms import Arm, ArmError, resolve
from ptychobench.arms import registry as reg
from ptychobench.data.recon import Reconstruction
from ptychobench.study.design import DesignError, load_design
from ptychobench.study.run import run_study

SOLVER = '''\
"""A stand-in external solver: a phase-ramp object; MODE breaks it on purpose."""
import json, sys, time
import numpy as np
from ptychobench.data.io import load

test, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
ds = load(test)
H, W = ds.frame_shape
obj = np.exp(1j * np.linspace(0, 0.3, W))[None, :].repeat(H, 0).astype(np.complex64)
if mode == "exit":
    sys.exit("solver diverged at iteration 7")
if mode == "sleep":
    time.sleep(60)
if mode == "nan":
    obj[3, 3] = np.nan
if mode == "shape":
    obj = obj[:-2]
if mode == "zeros":
    obj[:] = 0
meta = {"algorithm": "ramp", "truth_seen": ds.objectGuess is not None or ds.Y is not None}
np.savez(out, reconstructed_object=obj, coverage=np.ones(obj.shape, np.float32),
         metadata=np.array(json.dumps(meta)))
'''

HEAD = """\
name = "iso"
doses = [1e4]
device = "cpu"
num_threads = 1
[views.dense]
gridsize = 1
[simulation]
N = 32
object_size = 80
[arms.PtyChi]
epochs = 4
"""


def _command_arm(name: str, solver: Path, mode: str, extra: str = "") -> str:
    return (
        f"[arms.{name}]\ntype = \"command\"\n"
        f"command = \"{sys.executable} {solver} {{test}} {{out}} {mode}\"\nhalves = false\n{extra}"
    )


class BoomArm(Arm):
    """A Python arm that raises (an in-process plugin's bug)."""

    type_name = "Boom"

    def reconstruct(self, ds, ctx, **kw) -> Reconstruction:
        raise RuntimeError("Boom: index out of range in my_update()")


@pytest.fixture(scope="module")
def solver(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("solver") / "solver.py"
    p.write_text(SOLVER)
    return p


def _rows(run: Path) -> dict[tuple, list]:
    out = {}
    for p in sorted((run / "compare").rglob("comparison_metrics.csv")):
        with p.open(newline="") as fh:
            for r in csv.DictReader(fh):
                if r["metric"] in ("computation_time_s", "infer_s", "refine_s", "train_s"):
                    continue  # wall clock
                out.setdefault((p.parent.relative_to(run).as_posix(), r["model"]), []).append(r)
    return out


@pytest.fixture(scope="module")
def runs(solver, tmp_path_factory):
    """A clean run (PtyChi + the Ramp command arm), then the same plus five broken arms."""
    base = tmp_path_factory.mktemp("iso")
    good = HEAD + _command_arm("Ramp", solver, "ok")
    (base / "good.toml").write_text(good)
    r_good = run_study(load_design(base / "good.toml"), base / "good", design_text=good,
                       progress=False)
    broken = good + "".join(
        _command_arm(n, solver, m, x)
        for n, m, x in (
            ("Exits", "exit", ""),
            ("Hangs", "sleep", "timeout_s = 2\n"),
            ("NaN", "nan", ""),
            ("Shape", "shape", ""),
            ("Zeros", "zeros", ""),
        )
    ) + "[arms.Boom]\ntype = \"Boom\"\n"
    (base / "broken.toml").write_text(broken)
    mp = pytest.MonkeyPatch()
    mp.setitem(reg._BUILTIN_TYPES, "Boom", BoomArm)
    try:
        r_bad = run_study(load_design(base / "broken.toml"), base / "broken",
                          design_text=broken, progress=False)
    finally:
        mp.undo()
    return base, r_good, r_bad


def test_a_broken_arm_fails_only_its_own_cells(runs):
    base, r_good, r_bad = runs
    assert r_good.ok, r_good.errors
    failed = set(r_bad.failed)
    assert failed and all(j.split(".")[0] in
                          ("arm_exits", "arm_hangs", "arm_nan", "arm_shape", "arm_zeros",
                           "arm_boom")
                          for j in failed), failed
    assert not r_bad.blocked
    # every failure is one line naming its arm and the reason
    reasons = {j: r_bad.errors[j] for j in failed}
    expect = {
        "arm_exits": "Exits: reconstruct command exited 1: solver diverged at iteration 7",
        "arm_hangs": "Hangs: reconstruct command ran past timeout_s = 2 s",
        "arm_nan": "NaN: reconstruction has non-finite values",
        "arm_shape": "Shape: {out}: key 'reconstructed_object': expected shape (80, 80)",
        "arm_zeros": "Zeros: reconstruction is all zeros",
        "arm_boom": "Boom: index out of range",
    }
    for j, msg in reasons.items():
        assert "\n" not in msg and expect[j.split(".")[0]] in msg, (j, msg)
    # the other arms' metrics are identical to the run without the broken ones
    good, bad = _rows(base / "good"), _rows(base / "broken")
    for key, rows in good.items():
        assert bad[key] == rows, key
    for name in ("Exits", "Hangs", "NaN", "Shape", "Zeros", "Boom"):
        errs = [r for (c, m), rs in bad.items() if m == name for r in rs if r["metric"] == "error"]
        assert len(errs) == 2  # both splits: the cell is marked failed, with the reason
    # the run is still verified: the failures are explained, the rest checks out
    rep = json.loads((base / "broken" / "analysis" / "verification_report.json").read_text())
    assert rep["all_valid"], [c for c in rep["checks"] if not c["valid"]]
    verdict = json.loads((base / "broken" / "analysis" / "verdict.json").read_text())
    assert {"PtyChi", "Ramp"} <= set(verdict["verdicts"][0]["means"])


def test_a_command_arm_sees_no_truth_and_is_timed(runs):
    base, _, _ = runs
    p = base / "good" / "arms" / "ramp" / "dose_10000" / "dense" / "test" / "recon.npz"
    with np.load(p, allow_pickle=False) as f:
        meta = json.loads(str(f["metadata"]))
    assert meta["truth_seen"] is False and meta["arm"] == "Ramp"
    assert meta["infer_s"] > 0 and meta["seconds"] == meta["infer_s"]


def test_fixing_the_arm_reruns_only_its_jobs(runs, solver):
    base, _, _ = runs
    text = (base / "broken.toml").read_text().replace(f"{solver} {{test}} {{out}} exit",
                                                       f"{solver} {{test}} {{out}} ok")
    (base / "broken.toml").write_text(text)
    mp = pytest.MonkeyPatch()
    mp.setitem(reg._BUILTIN_TYPES, "Boom", BoomArm)
    try:
        # an edit of an arm keeps the study: the edited arm's key changed, so only its jobs
        # (and the comparisons that read them) re-run
        res = run_study(load_design(base / "broken.toml"), base / "broken", design_text=text,
                        progress=False)
    finally:
        mp.undo()
    ran = {j.split(".")[0] for j in res.ran}
    assert ran == {"arm_exits", "compare", "aggregate", "report", "verify"}, res.ran
    assert {j.split(".")[0] for j in res.failed} == {"arm_hangs", "arm_nan", "arm_shape",
                                                    "arm_zeros", "arm_boom"}


@pytest.mark.parametrize(
    "arms, message",
    [
        ('arms = ["PtyChi", "Nope"]', "arms.Nope: unknown arm 'Nope'"),
        ("[arms.PtyChi]\nepochz = 3", "arms.PtyChi.epochz: unknown key"),
        ('[arms.X]\ntype = "command"\ncommand = "run {test} {oops}"', "unknown placeholder {oops}"),
        ('[arms.X]\ntype = "command"\ncommand = "run {test}"', "expected the placeholder {out}"),
        ('arms = ["PtychoPINN+LSQML"]', "expected PtychoPINN in arms too"),
        ('[arms.A]\ntype = "PtyChi"\nstart = "A"', "cannot start from itself"),
    ],
)
def test_bad_arm_input_is_one_line_exit_2_and_nothing_written(tmp_path, arms, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'name = "bad"\n{arms}\n')
    out = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, "-m", "ptychobench.cli", "study", "run", str(cfg), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 2, p.stderr
    lines = [x for x in p.stderr.strip().splitlines() if x]
    assert len(lines) == 1 and message in lines[0], p.stderr
    assert not out.exists()


def test_an_entry_point_that_fails_to_import_is_named(monkeypatch):
    class BrokenEP:
        name, value, dist = "Broken", "broken_pkg.arms:Solver", None

        def load(self):
            raise ModuleNotFoundError("No module named 'broken_pkg'")

    monkeypatch.setattr(reg, "_entry_points", lambda: {"Broken": BrokenEP()})
    with pytest.raises(ArmError, match=r"arms\.Mine: entry point 'Broken' \(broken_pkg\.arms:"
                       r"Solver\) failed to import: ModuleNotFoundError"):
        resolve("Mine", {"type": "Broken"})
    with pytest.raises(ArmError, match="unknown arm 'Other'"):
        resolve("Other", {})


def test_design_errors_name_the_arm_and_the_legacy_key(tmp_path):
    cfg = tmp_path / "d.toml"
    cfg.write_text(textwrap.dedent("""\
        arms = ["PtychoPINN"]
        [pinn]
        epochs = 3
        [arms_placeholder]
        """).replace("[arms_placeholder]\n", ""))
    assert load_design(cfg).arm("PtychoPINN").settings.epochs == 3
    cfg.write_text('[arms.PtychoPINN]\nepochs = 4\n[pinn]\nepochs = 3\n')
    with pytest.raises(DesignError, match=r"arms\.PtychoPINN\.epochs: also set as pinn\.epochs"):
        load_design(cfg)


def test_only_one_arm_selects_its_jobs_and_the_comparisons(runs):
    from ptychobench.study.jobs import plan
    from ptychobench.study.run import StudyError, parse_only, select

    base, _, _ = runs
    d = load_design(base / "good.toml")
    jobs = select(plan(d), parse_only("arm=Ramp"), d)
    arms = {j.arm for j in jobs}
    assert arms == {None, "Ramp"}  # data, views, compare; no PtyChi job
    assert {j.kind for j in jobs} >= {"simulate", "view", "recon", "compare"}
    with pytest.raises(StudyError, match="--only arm: expected one of"):
        select(plan(d), {"arm": "Nope"}, d)


def test_an_arm_that_needs_a_gpu_is_refused_on_a_cpu_design(monkeypatch, tmp_path):
    from ptychobench.arms import Needs
    from ptychobench.study.feasibility import check_design

    class GpuArm(BoomArm):
        type_name = "Gpu"
        needs = Needs(gpu=True)

    monkeypatch.setitem(reg._BUILTIN_TYPES, "Gpu", GpuArm)
    cfg = tmp_path / "g.toml"
    cfg.write_text(HEAD + '[arms.Fast]\ntype = "Gpu"\n')
    msg = r'arms\.Fast: needs a GPU; the design says device = "cpu"'
    with pytest.raises(DesignError, match=msg):
        check_design(load_design(cfg))
