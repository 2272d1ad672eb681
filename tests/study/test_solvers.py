"""Several iterative solvers in one study: pty-chi's engines as arms, the agreement table
(aggregate.solver_agreement, the report's section), the solvers preset's plan."""

from __future__ import annotations

import pytest

from ptychobench.arms.registry import describe, resolve, resolve_all
from ptychobench.study.aggregate import Lineup, solver_agreement, verdict_document
from ptychobench.study.design import load_preset
from ptychobench.study.jobs import plan

SOLVERS = {"PtyChi": "pty-chi", "PtyChi-ePIE": "pty-chi", "CDTools": "CDTools"}


def _row(dose, view, arm, metric, x, repeat=0):
    tup = metric in ("ssim",)
    return {"dose": dose, "view": view, "split": "test", "repeat": repeat, "model": arm,
            "metric": metric, "amplitude": x if tup else None, "phase": x if tup else None,
            "value": None if tup else x}


def _rows(table):
    """``{(view, dose, arm): (ssim, nrmse, seconds)}`` → rows, two repeats ±0.01 apart."""
    rows = []
    for (view, dose, arm), (ssim, nrmse, sec) in table.items():
        for r, d in enumerate((-0.01, 0.01)):
            rows += [_row(dose, view, arm, "ssim", ssim + d, r),
                     _row(dose, view, arm, "nrmse", nrmse, r),
                     _row(dose, view, arm, "computation_time_s", sec + d, r)]
    return rows


LINEUP = Lineup(roles={"Flat": "floor", "Ceiling": "ceiling"}, solvers=SOLVERS)


def test_agreement_has_every_solver_the_best_and_both_spreads():
    rows = _rows({
        ("dense", 1e4, "PtyChi"): (0.80, 0.2, 20.0),
        ("dense", 1e4, "PtyChi-ePIE"): (0.70, 0.3, 10.0),
        ("dense", 1e4, "CDTools"): (0.77, 0.25, 40.0),
        ("dense", 1e4, "PtychoPINN"): (0.95, 0.1, 1.0),  # a network: never in the table
        ("dense", 1e4, "Flat"): (0.10, 0.7, 0.0),
        ("dense", 1e4, "Ceiling"): (0.90, 0.1, 5.0),
    })
    (c,) = solver_agreement(rows, LINEUP, seconds=True)
    assert (c["view"], c["dose"], c["best"]) == ("dense", 1e4, "PtyChi")
    assert set(c["arms"]) == set(SOLVERS)
    assert c["arms"]["CDTools"]["ssim phase"] == pytest.approx(0.77)
    assert c["arms"]["CDTools"]["computation_time_s value"] == pytest.approx(40.0)
    assert c["spread"] == pytest.approx(0.10)  # 0.80 − 0.70, every solver
    assert c["independent_spread"] == pytest.approx(0.03)  # best pty-chi 0.80 vs CDTools 0.77
    assert c["floor"] == pytest.approx(0.10) and c["ceiling"] == pytest.approx(0.90)
    # verdict.json carries it without the seconds (its bytes must not depend on the machine)
    doc = verdict_document(rows, LINEUP)
    assert "computation_time_s value" not in doc["solvers"][0]["arms"]["PtyChi"]


def test_one_library_has_no_independent_spread_and_one_solver_no_table():
    rows = _rows({("sparse", 1e3, "PtyChi"): (0.5, 0.4, 3.0),
                  ("sparse", 1e3, "PtyChi-ePIE"): (0.4, 0.5, 2.0)})
    (c,) = solver_agreement(rows, LINEUP)
    assert c["spread"] == pytest.approx(0.1) and c["independent_spread"] is None
    alone = _rows({("sparse", 1e3, "PtyChi"): (0.5, 0.4, 3.0)})
    assert solver_agreement(alone, LINEUP) == []
    assert "solvers" not in verdict_document(alone, LINEUP)


def test_the_solver_of_each_arm_is_recorded_and_a_hybrid_is_none():
    arms = resolve_all({"PtychoPINN": {}, "PtyChi": {}, "PtyChi-DM": {}, "CDTools": {},
                        "PMACE": {}, "PtychoPINN+LSQML": {}, "Ceiling": {}})
    d = describe(arms)
    assert {n: d[n]["solver"] for n in d} == {
        "PtychoPINN": None, "PtyChi": "pty-chi", "PtyChi-DM": "pty-chi", "CDTools": "CDTools",
        "PMACE": "xptycho", "PtychoPINN+LSQML": None, "Ceiling": None,
    }


def test_ptychi_engines_are_settings_and_each_step_reaches_the_options():
    from ptychobench.iterative import IterativeConfig, _options
    from ptychobench.simulate import simulate

    ds = simulate(N=32, object="grf", object_size=48, dose=1e3, step_px=8)
    for engine, cls in (("epie", "EPIE"), ("rpie", "RPIE"), ("pie", "PIE"), ("dm", "DM"),
                        ("raar", "RAAR"), ("lsqml", "LSQML")):
        opts, _ = _options(ds, IterativeConfig(engine=engine, step_size=0.5), "cpu")
        assert type(opts).__name__ == f"{cls}Options" and opts.object_options.step_size == 0.5
    opts, _ = _options(ds, IterativeConfig(engine="epie", alpha=0.3), "cpu")
    assert opts.object_options.alpha == 0.3
    assert opts.reconstructor_options.batch_size == min(10, ds.n)  # the PIE family's default
    with pytest.raises(ValueError, match="alpha: only the PIE family"):
        _options(ds, IterativeConfig(engine="dm", alpha=0.3), "cpu")
    a = resolve("Mine", {"type": "PtyChi", "engine": "rpie", "epochs": 7, "alpha": 0.2})
    assert a.solver() == "pty-chi" and a.settings.alpha == 0.2


def test_the_solvers_preset_plans_every_solver_the_networks_and_both_references():
    d = load_preset("solvers")
    names = set(d.arm_objects())
    assert {"PtyChi", "PtyChi-ePIE", "PtyChi-DM", "CDTools", "PMACE", "Ceiling", "Flat",
            "PtychoPINN", "Baseline"} <= names
    assert len(d.doses) == 3 and set(d.views) == {"dense", "sparse"}
    recons = {j.arm for j in plan(d) if j.kind == "recon"}
    assert {"PtyChi", "PtyChi-ePIE", "PtyChi-DM", "CDTools", "PMACE"} <= recons
