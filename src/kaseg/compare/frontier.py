"""Which method at my compute? Every arm at several training budgets, each (arm, budget) met by
CE only trained for at least the same cost, and the frontier that answers it.

A budget ``b`` trains a run for ``train.iters x b`` iterations (its own poly decay and
validations in proportion). CE only runs at every budget and at the budgets that meet each
distilling run's cost: its cost ratio to CE only x its budget, rounded *up* to the next
budget or point of a geometric grid (:data:`GRID` apart), so a distilling run is never met by a
CE run with less compute, and the report names how much more the CE run had. Costs are counted
three ways (:data:`ACCOUNTINGS`): FLOPs with the teacher's forward, seconds alone on this
machine, and FLOPs plus the teacher's own training when the comparison trained it (a user
without a teacher pays it); a comparison with a teacher cache adds a fourth, each step as it
ran without the teacher (the cache's one-off cost apart). Where CE only's largest run does not reach a run's cost in some
accounting the report says so instead of extrapolating.
"""

from __future__ import annotations

import math

from ..core.errors import KasegError
from ..core.stats import paired, summarize, verdict

GRID = 2.0  # CE only's budgets beyond the arms': powers of this
ACCOUNTINGS = {
    "flops": "training GFLOPs (the teacher's forward counted)",
    "seconds": "training seconds alone on this machine",
    "flops_teacher": "training GFLOPs + the teacher's own training",
    # a comparison with a teacher cache: each run's step as it ran, without the teacher (the
    # cache's one-off cost is reported apart, with the runs that shared it)
    "flops_cached": "training GFLOPs with the teacher cached",
}
COSTS = ("flops", "seconds")  # what ``compare.cost`` may plan and judge by


def budget_iters(iters: int, budget: float) -> int:
    return round(iters * budget)


def budget_tag(budget: float) -> str:
    """The run folder's budget part: ``-b3`` (budget 1 keeps today's names)."""
    return "" if budget == 1 else f"-b{budget:g}"


def check_budgets(budgets, iters: int, source: str | None = None) -> list[float]:
    """Budgets as floats; not a positive number, repeated, or rounding to 0 iterations at
    ``train.iters`` is a one-line error (``source``: what to name first)."""
    source = f"{source}: compare.budgets" if source else "compare.budgets"
    if not isinstance(budgets, (list, tuple)) or not budgets:
        raise KasegError(f"{source} must be a non-empty list of positive numbers, got "
                         f"{budgets!r}")
    out = []
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0 \
                or not math.isfinite(b):
            raise KasegError(f"{source}: {b!r} is not a positive number")
        if float(b) in out:
            raise KasegError(f"{source}: {b:g} is given twice")
        if budget_iters(iters, b) < 1:
            raise KasegError(f"{source}: {b:g} x train.iters={iters} rounds to 0 "
                             "iterations")
        out.append(float(b))
    return out


def budget_schedule(iters: int, val_every: int, budget: float) -> dict:
    """TrainConfig changes of a run at ``budget``: the same schedule shape stretched (its own
    poly decay over its length, validations as often in proportion)."""
    n = max(1, budget_iters(iters, budget))
    return {"iters": n, "val_every": min(n, max(1, round(val_every * n / iters)))}


def ce_budgets(step_cost: dict[str, float], base: str, budgets: list[float], iters: int,
               grid: float = GRID) -> tuple[list[float], dict[tuple[str, float], float]]:
    """CE only's budgets and each distilling (arm, budget)'s CE budget: the smallest budget of
    CE only (the arms' budgets and the powers of ``grid``) whose cost, ``step_cost[base] x its
    iterations``, is at least the arm's, ``step_cost[arm] x its iterations``.
    -> (sorted CE budgets: the arms' and every one a pair needs; ``{(arm, b): CE budget}``)."""
    if step_cost[base] <= 0:
        raise KasegError("CE only's step cost is 0: nothing can be matched to it")
    pairs, needed = {}, set(budgets)
    for arm, cost in step_cost.items():
        if arm == base:
            continue
        for b in budgets:
            target = cost * budget_iters(iters, b)
            k = math.floor(math.log(target / (step_cost[base] * iters), grid))
            # a few powers past the ratio: a budget's iterations are rounded, so the first power
            # above it can fall just short
            candidates = sorted({*budgets, *(grid ** j for j in range(k, k + 6))})
            ce = next(c for c in candidates
                      if step_cost[base] * budget_iters(iters, c) >= target * (1 - 1e-12))
            pairs[(arm, b)] = ce
            needed.add(ce)
    return sorted(needed), pairs


def _cost(rec: dict, accounting: str, teacher_gflops: float | None, distills: bool):
    if accounting == "seconds":
        return rec.get("train_seconds_alone")
    if accounting == "flops_cached":
        return rec.get("train_gflops_cached")
    c = rec.get("train_gflops")
    if c is None or accounting == "flops":
        return c
    return c + (teacher_gflops or 0.0) if distills else c


def points(records: list[dict], distilling: set[str], teacher_gflops: float | None) -> dict:
    """``{(arm, budget): {"seeds": {seed: mIoU %}, "cost": {accounting: mean}, "summary"}}`` of
    every finished run (records with ``budget``; 1 when absent)."""
    by: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("arm") in ("teacher", "init") or r.get("miou") is None:
            continue
        by.setdefault((r["arm"], float(r.get("budget", 1.0))), []).append(r)
    out = {}
    for key, recs in by.items():
        cost = {}
        for acc in ACCOUNTINGS:
            vals = [_cost(r, acc, teacher_gflops, key[0] in distilling) for r in recs]
            cost[acc] = None if None in vals or (acc == "flops_teacher" and teacher_gflops
                                                 is None) else sum(vals) / len(vals)
        seeds = {r["seed"]: 100 * r["miou"] for r in recs}
        out[key] = {"seeds": seeds, "cost": cost,
                    "summary": summarize(list(seeds.values())).to_dict()}
    return out


def pair(pts: dict, key: tuple, base: str, accounting: str) -> dict | None:
    """``key``'s run against CE only's cheapest run of at least its cost in ``accounting``:
    ``{"reached": True, "ce_budget", "ce_cost", "cost", "more" (CE's cost / the run's), "diff",
    "verdict"}``; ``{"reached": False, "largest_budget", "largest_cost", "cost"}`` when no CE
    run costs as much; None without a cost."""
    cost = pts[key]["cost"][accounting]
    ce = sorted(((k[1], p) for k, p in pts.items() if k[0] == base
                 and p["cost"][accounting] is not None), key=lambda kp: kp[1]["cost"][accounting])
    if cost is None or not ce:
        return None
    hit = next(((b, p) for b, p in ce if p["cost"][accounting] >= cost * (1 - 1e-9)), None)
    if hit is None:
        b, p = ce[-1]
        return {"reached": False, "largest_budget": b, "largest_cost": p["cost"][accounting],
                "cost": cost}
    b, p = hit
    seeds = sorted(set(pts[key]["seeds"]) & set(p["seeds"]))
    d = paired({s: pts[key]["seeds"][s] for s in seeds}, {s: p["seeds"][s] for s in seeds})
    return {"reached": True, "ce_budget": b, "ce_cost": p["cost"][accounting], "cost": cost,
            "more": p["cost"][accounting] / cost, "diff": d.to_dict(), "verdict": verdict(d)}


def ce_last_step(pts: dict, base: str) -> dict | None:
    """CE only's paired change from its second-largest budget to its largest: whether it has
    stopped improving (the interval includes 0) is part of the answer."""
    ce = sorted(k[1] for k in pts if k[0] == base)
    if len(ce) < 2:
        return None
    hi, lo = pts[(base, ce[-1])]["seeds"], pts[(base, ce[-2])]["seeds"]
    seeds = sorted(set(hi) & set(lo))
    if not seeds:
        return None
    d = paired({s: hi[s] for s in seeds}, {s: lo[s] for s in seeds})
    return {"from": ce[-2], "to": ce[-1], "diff": d.to_dict(), "verdict": verdict(d)}


def frontier(records: list[dict], base: str, rivals: list[str], distilling: set[str],
             teacher_gflops: float | None) -> dict:
    """Everything the report says about budgets, as data (``results.json``'s ``frontier``):
    the points, each rival (arm, budget)'s pair with CE only in every accounting, and CE only's
    last step."""
    pts = points(records, distilling, teacher_gflops)
    rows = []
    for (arm, b) in sorted(pts, key=lambda k: (k[1], k[0])):
        p = pts[(arm, b)]
        row = {"arm": arm, "budget": b, "summary": p["summary"], "cost": p["cost"],
               "seeds": sorted(p["seeds"])}
        if arm in rivals:
            # the cached accounting only in a comparison with a teacher cache
            row["vs_ce"] = {acc: pair(pts, (arm, b), base, acc) for acc in ACCOUNTINGS
                            if acc != "flops_cached" or p["cost"][acc] is not None}
        rows.append(row)
    return {"points": rows, "ce_last_step": ce_last_step(pts, base),
            "ce_budgets": sorted(b for a, b in pts if a == base),
            "teacher_training_gflops": teacher_gflops}


def fmt_cost(value: float, accounting: str) -> str:
    """A cost in words: FLOPs with an SI prefix (GFLOPs in, e.g. 4.1 PFLOPs out), seconds as
    seconds, minutes or hours."""
    if accounting == "seconds":
        return (f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min" if value < 7200
                else f"{value / 3600:.1f} h")
    flops = value * 1e9
    for unit, scale in (("EFLOPs", 1e18), ("PFLOPs", 1e15), ("TFLOPs", 1e12)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops / 1e9:.3g} GFLOPs"


def _ci(d: dict) -> str:
    return f"{d['mean']:+.2f}" + ("" if d["n"] < 2 else f" [{d['low']:+.2f}, {d['high']:+.2f}]")


def verdict_sentences(fr: dict, accounting: str, labels: dict[str, str]) -> list[str]:
    """The frontier's answer in ``accounting``, in words: which distilling runs beat CE only at
    the same cost (the best one, and up to which cost), what holds for the others and beyond,
    where CE only's runs do not reach, and whether CE only has stopped improving."""
    rows = [r for r in fr["points"] if r.get("vs_ce") and r["vs_ce"].get(accounting)]
    paired_ = [(r, r["vs_ce"][accounting]) for r in rows if r["vs_ce"][accounting]["reached"]]
    short = [(r, r["vs_ce"][accounting]) for r in rows if not r["vs_ce"][accounting]["reached"]]
    wins = [(r, v) for r, v in paired_ if v["verdict"] == "better"]
    lines = _wins_sentences(wins, paired_, accounting, labels, short) if wins else (
        [_no_win_sentence(paired_)] if paired_ else [])
    if short:
        lines.append(_short_sentence(short, len(rows), accounting, labels))
    step = fr.get("ce_last_step")
    if step and step["diff"]["n"] >= 2:
        if step["diff"]["low"] > 0:
            lines.append(f"CE only still improves at its largest budget ({_ci(step['diff'])} "
                         f"from budget {step['from']:g} to {step['to']:g}): the frontier cannot "
                         "say what happens beyond it; add a budget.")
        else:
            lines.append(f"CE only has stopped improving: from budget {step['from']:g} to "
                         f"{step['to']:g} it changes by {_ci(step['diff'])}.")
    return lines


def _name(r: dict, labels: dict[str, str]) -> str:
    return f"{labels.get(r['arm'], r['arm'])} (`{r['arm']}`) at budget {r['budget']:g}"


def _wins_sentences(wins: list, paired_: list, accounting: str, labels: dict,
                    short: list) -> list[str]:
    """The best run that beats CE only at its cost, the others that do, and what holds for the
    rest: below, among and beyond them (``short``: the runs no CE run reaches)."""
    edge = max(v["cost"] for _, v in wins)
    best_r, best_v = max(wins, key=lambda rv: rv[0]["summary"]["mean"])
    lines = [f"Up to {fmt_cost(edge, accounting)} the best student is {_name(best_r, labels)} "
             f"({_ci(best_v['diff'])} over CE only at budget {best_v['ce_budget']:g}, "
             f"{best_v['more']:.2f}x its cost, at {fmt_cost(best_v['cost'], accounting)})."]
    others = [(r, v) for r, v in wins if r is not best_r]
    if others:
        lines.append("Also better than CE only at the same cost: " + ", ".join(
            f"{_name(r, labels)} ({_ci(v['diff'])})" for r, v in others) + ".")
    rest = [v for r, v in paired_ if v["verdict"] != "better"]
    beyond = [v for v in rest if v["cost"] > edge]
    if rest:
        worse = sum(v["verdict"] == "worse" for v in rest)
        parts = ([f"as good as {len(rest) - worse}"] if len(rest) > worse else []) + (
            [f"better than {worse}"] if worse else [])
        lines.append(f"Against the other {len(rest)} distilling run(s), CE only trained for the "
                     f"same cost is {' and '.join(parts)}.")
    if beyond:
        lines.append(f"Beyond {fmt_cost(edge, accounting)}, CE only trained longer is as good" +
                     (" or better" if any(v["verdict"] == "worse" for v in beyond) else "") + ".")
    if not beyond:
        unmet = any(v["cost"] > edge for _, v in short)
        lines.append(("No costlier distilling run is met by CE only at its cost" if unmet else
                      "No distilling run costs more") + ": whether the gain holds beyond is "
                     "not measured.")
    return lines


def _no_win_sentence(paired_: list) -> str:
    worse = [v for _, v in paired_ if v["verdict"] == "worse"]
    return ("At every budget measured, CE only trained for the same cost is as good as every "
            "distilling run" + (f", and better than {len(worse)} of the {len(paired_)}"
                                if worse else "") + ".")


def _short_sentence(short: list, total: int, accounting: str, labels: dict) -> str:
    """Where CE only's largest run does not reach: every run, or the ones named."""
    top = max(v["largest_cost"] for _, v in short)
    costs = [v["cost"] for _, v in short]
    which = (f"any distilling run ({fmt_cost(min(costs), accounting)} to "
             f"{fmt_cost(max(costs), accounting)})" if len(short) == total and len(short) > 1
             else ", ".join(f"{_name(r, labels)} ({fmt_cost(v['cost'], accounting)})"
                            for r, v in short))
    return (f"CE only's largest run ({fmt_cost(top, accounting)}) does not reach the cost of "
            f"{which}: no pair there (not extrapolated).")


def headline(fr: dict, accounting: str) -> tuple:
    """What decides the verdict in ``accounting`` (the winning runs), to say when another
    accounting would change it."""
    return tuple(sorted((r["arm"], r["budget"]) for r in fr["points"]
                        if (r.get("vs_ce") or {}).get(accounting)
                        and r["vs_ce"][accounting].get("verdict") == "better"))
