"""The reference-free scores are checked before they may name a winner: against the truth where
there is one, against each other where there is not (aggregate.yardstick_check, the verdicts'
"no verdict" and the report's statement)."""

from __future__ import annotations

import pytest
from scipy.stats import spearmanr

from ptychobench.study.aggregate import TRUST_RHO, UNTRUSTED, verdicts, yardstick_check
from ptychobench.study.report import verdict_view, yardstick_lines

ARMS = ("PtychoPINN", "Baseline", "PtyChi", "PtychoPINN+LSQML")
DOSES = (1e3, 1e4, 1e5)


def _row(dose, view, arm, metric, *, phase=None, amplitude=None, value=None, repeat=0):
    return {"dose": dose, "view": view, "split": "test", "repeat": repeat, "model": arm,
            "metric": metric, "amplitude": amplitude, "phase": phase, "value": value}


def _rows(ssim, nll=None, frc=None, frc50=None):
    """Rows from ``{(view, dose, arm): value}`` tables (``None``: that metric absent)."""
    rows = []
    for (view, dose, arm), x in (ssim or {}).items():
        rows.append(_row(dose, view, arm, "ssim", phase=x, amplitude=x))
    for (view, dose, arm), x in (nll or {}).items():
        rows.append(_row(dose, view, arm, "heldout_nll_rel", value=x))
    for (view, dose, arm), x in (frc or {}).items():
        rows.append(_row(dose, view, arm, "halfscan_frc_halfbit", phase=x, amplitude=x))
    for (view, dose, arm), x in (frc50 or {}).items():
        rows.append(_row(dose, view, arm, "frc50", phase=x, amplitude=x))
    return rows


def _quality():
    """A truth table: arms ordered, better at higher dose; distinct everywhere."""
    return {
        (view, dose, arm): 0.1 * (i + 1) + 0.05 * k + (0.01 if view == "sparse" else 0.0)
        for view in ("dense", "sparse")
        for k, dose in enumerate(DOSES)
        for i, arm in enumerate(ARMS)
    }


def test_a_yardstick_that_ranks_as_the_truth_does_is_trusted_with_rho_minus_one():
    q = _quality()
    nll = {k: 2.0 - x for k, x in q.items()}  # lower NLL exactly where SSIM is higher
    check = yardstick_check(_rows(q, nll=nll))
    s = check["scores"]["heldout_nll_rel"]
    assert check["mode"] == "truth" and s["against"] == "ssim phase"
    assert s["rho"] == pytest.approx(-1.0) and s["n"] == 24 and s["trusted"] is True
    assert s["winner_agrees"] == s["conditions"] == 6 and s["disagree"] == []
    v = [x for x in verdicts(_rows(q, nll=nll)) if x["metric"] == "heldout_nll_rel"]
    assert {x["arm"] for x in v} == {"PtychoPINN+LSQML"}
    assert all(x["yardstick"] == {"trusted": True, "reason": ""} for x in v)


def test_the_pooled_rho_is_scipys_spearman_of_the_condition_means():
    q = _quality()
    nll = {k: (2.0 - x) * (1.3 if k[2] == "Baseline" else 1.0) for k, x in q.items()}
    keys = sorted(q)
    want = spearmanr([nll[k] for k in keys], [q[k] for k in keys]).statistic
    s = yardstick_check(_rows(q, nll=nll))["scores"]["heldout_nll_rel"]
    assert s["rho"] == pytest.approx(want, abs=1e-12)


def test_a_yardstick_that_misranks_names_no_winner_and_says_why():
    q = _quality()
    nll = {k: x for k, x in q.items()}  # "lower is better" score that grows with quality: reversed
    rows = _rows(q, nll=nll)
    s = yardstick_check(rows)["scores"]["heldout_nll_rel"]
    assert s["rho"] == pytest.approx(1.0) and s["trusted"] is False
    v = [x for x in verdicts(rows) if x["metric"] == "heldout_nll_rel"]
    assert {x["arm"] for x in v} == {UNTRUSTED}
    assert all(x["leader"] == "PtychoPINN" for x in v)  # what it would have crowned
    assert "ranks the arms unlike the truth" in v[0]["yardstick"]["reason"]
    # the truth's own verdicts are untouched
    head = [x for x in verdicts(rows) if (x["metric"], x["part"]) == ("ssim", "phase")]
    assert {x["arm"] for x in head} == {"PtychoPINN+LSQML"} and "yardstick" not in head[0]
    view = verdict_view(verdicts(rows), 1, yardstick_check(rows))
    tab = next(t for t in view["tabs"] if t["metric"] == "heldout_nll_rel")
    cells = [c for r in tab["rows"] for c in r["cells"]]
    assert {c["arm_text"] for c in cells} == {UNTRUSTED} and {c["arm"] for c in cells} == {
        UNTRUSTED
    }
    assert all("PtychoPINN leads by this score" in c["detail"] for c in cells)
    assert any("NOT trusted" in line for line in view["yardstick"])


def test_a_trusted_yardstick_still_names_no_winner_where_it_picks_another_than_the_truth():
    q = _quality()
    nll = {k: 2.0 - x for k, x in q.items()}
    nll[("sparse", 1e4, "PtyChi")] = 0.0  # best by NLL in one condition only
    rows = _rows(q, nll=nll)
    s = yardstick_check(rows)["scores"]["heldout_nll_rel"]
    assert s["trusted"] is True and s["rho"] * -1 >= TRUST_RHO
    assert s["disagree"] == [
        {"view": "sparse", "dose": 1e4, "by_score": "PtyChi", "by_other": "PtychoPINN+LSQML"}
    ]
    v = {(x["view"], x["dose"]): x for x in verdicts(rows) if x["metric"] == "heldout_nll_rel"}
    assert v[("sparse", 1e4)]["arm"] == UNTRUSTED
    assert v[("sparse", 1e4)]["yardstick"]["reason"] == (
        "it picks PtyChi here, the truth picks PtychoPINN+LSQML"
    )
    assert v[("dense", 1e4)]["arm"] == "PtychoPINN+LSQML"


def test_without_truth_the_two_scores_are_checked_against_each_other():
    q = _quality()
    nll = {k: 2.0 - x for k, x in q.items()}
    agree = _rows(None, nll=nll, frc=dict(q))
    check = yardstick_check(agree)
    assert check["mode"] == "consistency"
    assert check["scores"]["heldout_nll_rel"]["against"] == "halfscan_frc_halfbit phase"
    assert check["scores"]["heldout_nll_rel"]["rho"] == pytest.approx(-1.0)
    assert check["scores"]["halfscan_frc_halfbit"]["rho"] == pytest.approx(-1.0)
    assert all(s["trusted"] for s in check["scores"].values())
    v = [x for x in verdicts(agree) if x["metric"] == "heldout_nll_rel"]
    assert {x["arm"] for x in v} == {"PtychoPINN+LSQML"}
    # the half-scan FRC ranks in reverse: neither score may name a winner anywhere
    disagree = _rows(None, nll=nll, frc={k: -x for k, x in q.items()})
    check = yardstick_check(disagree)
    assert not any(s["trusted"] for s in check["scores"].values())
    free = [x for x in verdicts(disagree) if x["metric"] in ("heldout_nll_rel",
                                                           "halfscan_frc_halfbit")]
    assert free and {x["arm"] for x in free} == {UNTRUSTED}
    lines = yardstick_lines(check)
    assert lines[0].startswith("No ground truth") and "NOT trusted" in lines[1]


def test_one_score_alone_without_truth_is_not_checked_and_names_no_winner():
    q = _quality()
    rows = _rows(None, nll={k: 2.0 - x for k, x in q.items()})
    check = yardstick_check(rows)
    s = check["scores"]["heldout_nll_rel"]
    assert s["rho"] is None and s["trusted"] is False
    v = [x for x in verdicts(rows) if x["metric"] == "heldout_nll_rel"]
    assert {x["arm"] for x in v} == {UNTRUSTED}
    assert "not checked" in v[0]["yardstick"]["reason"]


def test_references_are_not_ranked_and_a_run_without_free_scores_has_no_check():
    q = _quality()
    nll = {k: 2.0 - x for k, x in q.items()}
    rows = _rows(q, nll=nll)
    # Flat with an absurdly good NLL would break the ranking if it were counted
    rows += [_row(d, v, "Flat", "heldout_nll_rel", value=-5.0)
             for v in ("dense", "sparse") for d in DOSES]
    assert yardstick_check(rows)["scores"]["heldout_nll_rel"]["rho"] == pytest.approx(-1.0)
    assert yardstick_check(_rows(q)) == {"mode": "none", "threshold": TRUST_RHO, "scores": {}}
    assert yardstick_lines(yardstick_check(_rows(q))) == []


def test_separated_pairs_count_only_the_pairs_the_truth_tells_apart():
    q = _quality()  # arms 0.1 apart in every condition: every pair is separated
    nll = {k: 2.0 - x for k, x in q.items()}
    # two arms at the floor, 0.01 apart, ranked backwards by the score: not counted
    for view in ("dense", "sparse"):
        for dose in DOSES:
            q[(view, dose, "PtychoPINN")] = 0.02
            q[(view, dose, "Baseline")] = 0.03
            nll[(view, dose, "PtychoPINN")] = 1.9
            nll[(view, dose, "Baseline")] = 2.0
    s = yardstick_check(_rows(q, nll=nll))["scores"]["heldout_nll_rel"]
    # per condition 6 pairs, 5 of them separated, all 5 ordered alike
    assert s["separated_pairs"] == 30 and s["separated_agree"] == 30
    assert s["rho"] > -1.0  # the floor pair's reversal still costs the pooled ρ
