"""Designs nobody wrote by hand (hypothesis): every drawn design is either planned by
``study run --dry-run`` or refused in one line that names the key — never a traceback, never a
file written.

Valid designs are drawn across the schema (doses, views, split, arms, repeats, seeds, sizes near
the feasibility limits); invalid ones are a valid draw with one leaf made wrong (a wrong type,
zero, negative, NaN, ±inf, a huge number), an unknown key, or an empty table. The counts of
each outcome are printed (``-s``) for the record.
"""

from __future__ import annotations

import collections
import math
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
tomli_w = pytest.importorskip("tomli_w")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from ptychobench.cli import app  # noqa: E402

ARMS = ["PtychoPINN", "Baseline", "PtyChi", "PtychoPINN+LSQML", "PtychoPINN+TTR"]
OUTCOMES: collections.Counter = collections.Counter()
EXAMPLES = int(__import__("os").environ.get("PB_DESIGN_EXAMPLES", 150))


def _finite(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def views(draw):
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), min_size=1,
                          max_size=3, unique=True))
    out = {}
    for name in names:
        gs = draw(st.sampled_from([1, 2]))
        v = {"gridsize": gs, "s_img": draw(_finite(0.05, 1.0))}
        if gs == 2:
            v["neighbor_count"] = draw(st.integers(4, 12))
        if draw(st.booleans()):
            v["n_groups"] = draw(st.integers(1, 400))
        if draw(st.booleans()):
            v["crop_size_M"] = draw(st.integers(1, 16))
        if draw(st.booleans()):
            v["stitch_weighting"] = draw(st.sampled_from(["flat", "probe"]))
        out[name] = v
    return out


@st.composite
def designs(draw):
    n = draw(st.sampled_from([8, 16, 32]))
    sim = {
        "N": n,
        # from just below what the probe and scan need to comfortably above
        "object_size": draw(st.integers(max(16, n), 6 * n + 48)),
        "probe": draw(st.sampled_from(["fly64", "gaussian", "disk", "kb"])),
        "scan": draw(st.sampled_from(["random", "raster", "fermat"])),
        "noise": draw(st.sampled_from(["poisson", "none"])),
        "object": draw(st.sampled_from(["lines", "grf", "image:camera+moon"])),
    }
    if sim["scan"] == "raster" and draw(st.booleans()):
        sim["jitter_px"] = draw(_finite(0.0, 4.0))  # raster only (the schema says so)
    if draw(st.booleans()):
        sim["overlap"] = draw(_finite(0.0, 0.95))
    else:
        sim["step_px"] = draw(_finite(0.5, 2.0 * n))
        sim["overlap"] = None if draw(st.booleans()) else draw(_finite(0.0, 0.95))
    sim = {k: v for k, v in sim.items() if v is not None}
    doses = draw(st.lists(st.integers(1, 10**9), min_size=1, max_size=4, unique=True))
    doc = {
        "name": draw(st.text(min_size=1, max_size=20)),
        "doses": [float(d) for d in doses],
        "arms": draw(st.lists(st.sampled_from(ARMS), min_size=1, max_size=len(ARMS),
                              unique=True)),
        "repeats": draw(st.integers(1, 4)),
        "device": "cpu",
        "views": draw(views()),
        "split": {
            "axis": draw(st.sampled_from(["x", "y"])),
            "fraction": draw(_finite(0.05, 0.95)),
            "heldout_fraction": draw(_finite(0.0, 0.5)),
        },
        "seeds": {k: draw(st.integers(0, 2**31 - 1)) for k in ("simulation", "noise",
                                                               "grouping", "training")},
        "metrics": {"phase_sync": draw(st.integers(0, 40))},
        "simulation": sim,
        "pinn": {"epochs": draw(st.integers(1, 60))},
        "iterative": {"epochs": draw(st.integers(1, 200))},
    }
    if any("+" in a for a in doc["arms"]) and "PtychoPINN" not in doc["arms"]:
        doc["arms"].append("PtychoPINN")  # a hybrid starts from it
    if "PtychoPINN" not in doc["arms"]:
        doc.pop("pinn")
    return doc


def _leaves(doc, prefix=()):
    for k, v in doc.items():
        if isinstance(v, dict):
            yield from _leaves(v, (*prefix, k))
        elif k not in ("name", "device"):  # free text / a choice every value of which we list
            yield (*prefix, k)


BAD = {
    "a string": "lots",
    "zero": 0,
    "negative": -3,
    "NaN": math.nan,
    "+inf": math.inf,
    "-inf": -math.inf,
    "huge": 10**30,
    "a table": {"x": 1},
}
#: (path, bad value) pairs that are in fact valid: 0 epochs (the start), a zero jitter, seed,
#: held-out fraction, overlap or phase-sync count; a negative training seed; more groups than
#: positions (capped) and absurd epoch counts — every other bad value must be refused
STILL_VALID = {
    *((("seeds", k), "zero") for k in ("simulation", "noise", "grouping", "training")),
    (("seeds", "training"), "negative"),
    (("simulation", "jitter_px"), "zero"),
    (("simulation", "overlap"), "zero"),
    (("split", "heldout_fraction"), "zero"),
    (("metrics", "phase_sync"), "zero"),
    *(((s, "epochs"), v) for s in ("pinn", "iterative") for v in ("zero", "huge")),
}


def _still_valid(path: tuple, label: str) -> bool:
    if path[-1] == "n_groups" and label == "huge":
        return True
    return (tuple(path), label) in STILL_VALID


@st.composite
def broken(draw):
    doc = draw(designs())
    # uniform over the kinds of damage (sampled_from leans on its first elements)
    rnd = draw(st.randoms(use_true_random=False))
    how = rnd.choice(["leaf", "leaf", "leaf", "unknown key", "empty table"])
    if how == "unknown key":
        tables = [()] + [(k,) for k, v in doc.items() if isinstance(v, dict)]
        where = rnd.choice(tables)
        target = doc
        for k in where:
            target = target[k]
        target["bogus_key"] = 1
        return doc, (*where, "bogus_key"), "unknown key", True
    if how == "empty table":
        key = rnd.choice(["views", "arms", "doses"])
        doc[key] = {} if key == "views" else []
        return doc, (key,), "empty", True
    path = rnd.choice(sorted(_leaves(doc)))
    label = rnd.choice(sorted(BAD))
    target = doc
    for k in path[:-1]:
        target = target[k]
    old = target[path[-1]]
    value = BAD[label]
    if isinstance(old, list) and old and label != "a table":
        target[path[-1]] = [*old[:-1], value]
    else:
        target[path[-1]] = value
    return doc, path, label, not _still_valid(path, label)


def _dry_run(doc) -> tuple[int, str, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "design.toml"
        cfg.write_text(tomli_w.dumps(doc))
        res = CliRunner().invoke(app, ["study", "run", str(cfg), "--dry-run",
                                       "--out", str(Path(tmp) / "run")])
        left = sorted(p.name for p in Path(tmp).iterdir())
    return res.exit_code, res.stdout + res.stderr, left


def _check_one_line(out: str, code: int) -> str:
    assert "Traceback" not in out, out
    assert code == 2, out
    errors = [ln for ln in out.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), out
    return errors[0]


_SETTINGS = dict(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same draws on every machine: CI is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@settings(**_SETTINGS)
@given(designs())
def test_valid_designs_are_planned_or_refused_in_one_line(doc):
    code, out, left = _dry_run(doc)
    assert left == ["design.toml"], f"files written: {left}"
    if code == 0:
        assert "dry run: nothing written" in out and "Traceback" not in out
        OUTCOMES["valid: planned"] += 1
    else:
        line = _check_one_line(out, code)
        # a schema-valid design its object, probe or scan cannot hold says which key to change
        assert any(k in line for k in ("views.", "simulation.", "split.", "arms", "doses")), line
        OUTCOMES["valid: refused by the plan check"] += 1


@settings(**_SETTINGS)
@given(broken())
def test_invalid_designs_are_refused_in_one_line_naming_the_key(case):
    doc, path, label, must_refuse = case
    code, out, left = _dry_run(doc)
    assert left == ["design.toml"], f"files written: {left}"
    if not must_refuse:  # a valid value after all: planned, or refused by the plan check
        if code != 0:
            _check_one_line(out, code)
        OUTCOMES[f"still valid ({label}): {'planned' if code == 0 else 'refused'}"] += 1
        return
    assert code != 0, f"{'.'.join(path)} = {label} was planned:\n{out}"
    line = _check_one_line(out, code)
    leaf = path[-1]
    assert leaf in line or (leaf == "pinn" and "PtychoPINN" in line), (path, label, line)
    OUTCOMES[f"invalid: refused ({label})"] += 1


def test_zz_print_outcomes():
    """The counts for the closing note (run with ``-s``)."""
    if not OUTCOMES:
        pytest.skip("the property tests did not run in this session")
    print("\ndesign property test outcomes:", dict(sorted(OUTCOMES.items())))
    assert sum(OUTCOMES.values()) >= EXAMPLES
