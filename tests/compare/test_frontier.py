"""The frontier's arithmetic: budgets checked, CE only's budgets that meet each run's cost (a
hand-computed case), the pairs in three accountings, and the verdict's sentences."""

import pytest

from kaseg.compare.frontier import (budget_schedule, budget_tag, ce_budgets, check_budgets,
                                    fmt_cost, frontier, verdict_sentences)
from kaseg.compare.runner import spec_from
from kaseg.core.errors import KasegError


def test_bad_budgets_and_an_unknown_accounting_are_one_line_errors():
    assert check_budgets([1, 3, 9.0], 150) == [1.0, 3.0, 9.0]
    for bad, why in (([0], r"0 is not a positive number"), ([1, -2], r"-2 is not a positive"),
                     (["x"], r"'x' is not a positive number"), ([1, 3, 1], r"1 is given twice"),
                     ([1, 0.001], r"0.001 x train.iters=150 rounds to 0 iterations"),
                     ([], r"must be a non-empty list")):
        with pytest.raises(KasegError, match=f"exp.yaml: compare.budgets.*{why}"):
            check_budgets(bad, 150, "exp.yaml")
    with pytest.raises(KasegError, match=r"exp.yaml: compare.budgets: 3 is given twice"):
        spec_from({"budgets": [1, 3, 3]}, "exp.yaml")
    with pytest.raises(KasegError, match=r"exp.yaml: compare.cost: unknown accounting 'joules'; "
                       r"known: flops, seconds"):
        spec_from({"cost": "joules"}, "exp.yaml")
    assert spec_from({}, "exp.yaml").budgets is None  # no budgets: as before
    for bad in (0, "8", True):
        with pytest.raises(KasegError, match=r"exp.yaml: compare.max_ce_budget must be a number "
                           rf"> 0, got {bad!r}"):
            spec_from({"budgets": [1], "max_ce_budget": bad}, "exp.yaml")


def test_a_budget_stretches_the_schedule_and_names_the_folder():
    assert budget_schedule(150, 50, 3) == {"iters": 450, "val_every": 150}
    assert budget_schedule(150, 150, 0.5) == {"iters": 75, "val_every": 75}
    assert (budget_tag(1.0), budget_tag(3.0), budget_tag(0.5)) == ("", "-b3", "-b0.5")


def test_each_run_is_met_by_the_cheapest_ce_budget_of_at_least_its_cost():
    """CE only 1 per iteration, KD 3, the method 5; budgets 1 and 3 of 10 iterations. KD at 1
    costs 30 = CE at budget 3 (one of the arms' budgets, exactly its cost); KD at 3 costs 90:
    the grid's 8 (80) is short, 16 (160) meets it; the method at 1 costs 50: 4 is short, 8;
    at 3, 150: 16."""
    ce, pairs = ce_budgets({"baseline": 1.0, "kd": 3.0, "ka": 5.0}, "baseline", [1.0, 3.0], 10)
    assert pairs == {("kd", 1.0): 3.0, ("kd", 3.0): 16.0, ("ka", 1.0): 8.0, ("ka", 3.0): 16.0}
    assert ce == [1.0, 3.0, 8.0, 16.0]
    # a run cheaper than CE only's smallest budget is met below 1 on the grid
    _, pairs = ce_budgets({"baseline": 4.0, "kd": 6.0}, "baseline", [0.25], 8)
    assert pairs == {("kd", 0.25): 0.5}  # 12 FLOPs: 0.5 x 8 iterations x 4 = 16


def _rec(arm, budget, seed, miou, gflops, seconds):
    return {"arm": arm, "budget": budget, "seed": seed, "miou": miou / 100,
            "train_gflops": gflops, "train_seconds_alone": seconds}


def _records(kd_gain_at_1: float, kd_gain_at_3: float, ce_top_step: float) -> list[dict]:
    """CE only at budgets 1, 3, 8, 16 (1 GFLOP and 1 s per unit), KD at 1 and 3 (3 GFLOPs and
    1.5 s per unit); three seeds, each seed's values shifted by the seed."""
    recs = []
    for s in range(3):
        ce = {1: 40.0, 3: 45.0, 8: 48.0, 16: 48.0 + ce_top_step}
        for b, m in ce.items():
            recs.append(_rec("baseline", b, s, m + s + 0.1 * s * s, b, b))
        recs.append(_rec("kd", 1, s, ce[3] + kd_gain_at_1 + s + 0.1 * s * s, 3, 1.5))
        recs.append(_rec("kd", 3, s, ce[16] + kd_gain_at_3 + s + 0.1 * s * s + 0.2 * s, 9, 4.5))
    return recs


def test_the_pairs_in_three_accountings_count_the_teacher_only_when_trained():
    fr = frontier(_records(2.0, -1.0, 0.0), "baseline", ["kd"], {"kd"}, teacher_gflops=None)
    kd1 = next(r for r in fr["points"] if (r["arm"], r["budget"]) == ("kd", 1.0))
    flops, secs = kd1["vs_ce"]["flops"], kd1["vs_ce"]["seconds"]
    assert (flops["ce_budget"], flops["more"]) == (3.0, 1.0)  # 3 GFLOPs: CE at 3, exactly
    assert flops["diff"]["mean"] == pytest.approx(2.0) and flops["verdict"] == "better"
    assert (secs["ce_budget"], secs["more"]) == (3.0, 2.0)  # 1.5 s: CE at 3 (3 s) is the cheapest
    assert kd1["vs_ce"]["flops_teacher"] is None  # no teacher trained: no third accounting
    fr = frontier(_records(2.0, -1.0, 0.0), "baseline", ["kd"], {"kd"}, teacher_gflops=10.0)
    kd1 = next(r for r in fr["points"] if (r["arm"], r["budget"]) == ("kd", 1.0))
    assert kd1["cost"]["flops_teacher"] == 13.0  # 3 + the teacher's 10
    assert kd1["vs_ce"]["flops_teacher"]["ce_budget"] == 16.0
    kd3 = next(r for r in fr["points"] if (r["arm"], r["budget"]) == ("kd", 3.0))
    assert kd3["vs_ce"]["flops_teacher"] == {"reached": False, "largest_budget": 16.0,
                                             "largest_cost": 16.0, "cost": 19.0}
    ce1 = next(r for r in fr["points"] if (r["arm"], r["budget"]) == ("baseline", 1.0))
    assert ce1["cost"]["flops_teacher"] == 1.0  # CE only never pays for the teacher


def test_the_verdict_says_up_to_where_distillation_wins_and_what_holds_beyond():
    fr = frontier(_records(2.0, -1.0, 0.0), "baseline", ["kd"], {"kd"}, None)
    text = " ".join(verdict_sentences(fr, "flops", {"kd": "CE + KD"}))  # KD at 3: -1 to -0.6
    assert text.startswith("Up to 3 GFLOPs the best student is CE + KD (`kd`) at budget 1 "
                           "(+2.00 [+2.00, +2.00] over CE only at budget 3, 1.00x its cost, at "
                           "3 GFLOPs). Against the other 1 distilling run(s), CE only trained "
                           "for the same cost is better than 1. Beyond 3 GFLOPs, CE only trained "
                           "longer is as good or better.")
    assert "CE only has stopped improving: from budget 8 to 16 it changes by +0.00" in text


def test_the_verdict_says_ce_only_is_as_good_and_when_it_still_improves():
    fr = frontier(_records(-1.0, -2.0, 3.0), "baseline", ["kd"], {"kd"}, None)
    lines = verdict_sentences(fr, "flops", {"kd": "CE + KD"})
    assert lines[0] == ("At every budget measured, CE only trained for the same cost is as good "
                        "as every distilling run, and better than 2 of the 2.")
    assert lines[1] == ("CE only still improves at its largest budget (+3.00 [+3.00, +3.00] "
                        "from budget 8 to 16): the frontier cannot say what happens beyond it; "
                        "add a budget.")


def test_the_verdict_names_runs_ce_only_does_not_reach():
    fr = frontier(_records(2.0, -1.0, 0.0), "baseline", ["kd"], {"kd"}, teacher_gflops=10.0)
    text = " ".join(verdict_sentences(fr, "flops_teacher", {"kd": "CE + KD"}))
    assert ("CE only's largest run (16 GFLOPs) does not reach the cost of CE + KD (`kd`) at "
            "budget 3 (19 GFLOPs): no pair there (not extrapolated).") in text


def test_a_win_below_runs_ce_only_does_not_reach_does_not_say_nothing_costs_more():
    """KD wins at budget 1 (3 GFLOPs); KD at 3 (9 GFLOPs) costs more than CE only's largest run
    (budget 3): it is not 'no distilling run costs more', it is one CE only does not meet."""
    recs = [r for r in _records(2.0, -1.0, 0.0) if r["budget"] <= 3]
    fr = frontier(recs, "baseline", ["kd"], {"kd"}, None)
    text = " ".join(verdict_sentences(fr, "flops", {"kd": "CE + KD"}))
    assert ("at 3 GFLOPs). No costlier distilling run is met by CE only at its cost: whether the "
            "gain holds beyond is not measured. CE only's largest run (3 GFLOPs) does not reach "
            "the cost of CE + KD (`kd`) at budget 3 (9 GFLOPs): no pair there") in text


def test_costs_are_written_with_their_units():
    assert fmt_cost(4.1e6, "flops") == "4.1 PFLOPs"
    assert fmt_cost(850.0, "flops") == "850 GFLOPs"
    assert (fmt_cost(95, "seconds"), fmt_cost(600, "seconds"), fmt_cost(9000, "seconds")) == (
        "95 s", "10.0 min", "2.5 h")
