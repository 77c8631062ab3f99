"""The frontier's part of a comparison's report: ``results.json``'s ``frontier``, the tables per
budget, the verdict in words in each accounting, and ``frontier.png``."""

from __future__ import annotations

from pathlib import Path

from .arms import BASELINE
from .frontier import ACCOUNTINGS, fmt_cost, frontier, headline, verdict_sentences
from .runner import CompareSpec
from .tables import label
from ..core.config import Config
from ..engine.stages import teacher_training_flops
from ..engine.visualize import frontier_plot


def frontier_of(cfg: Config, got: dict, spec: CompareSpec) -> dict:
    """The frontier of the finished runs (:func:`kaseg.compare.frontier.frontier`), with the
    teacher's training counted in the third accounting only when this comparison trained it."""
    rivals = [a.name for a in spec.arms
              if not (a.control or a.matched) and a.name != BASELINE]
    distilling = {a.name for a in spec.arms if a.uses_teacher(cfg.distill)}
    teacher = teacher_training_flops(cfg) / 1e9 if got.get("trained_teacher") else None
    fr = frontier(got["records"], BASELINE, rivals, distilling, teacher)
    return {**fr, "accounting": spec.cost, "budgets": list(spec.budgets or []),
            "iters": cfg.train.iters}


def _cell(v: dict | None, accounting: str) -> str:
    if v is None:
        return "n/a"
    if not v["reached"]:
        return f"not reached (CE only's largest: {fmt_cost(v['largest_cost'], accounting)})"
    d = v["diff"]
    ci = "" if d["n"] < 2 else f" [{d['low']:+.2f}, {d['high']:+.2f}]"
    return f"{d['mean']:+.2f}{ci} (CE b{v['ce_budget']:g}, {v['more']:.2f}x)"


def budget_table(fr: dict, budget: float) -> list[str]:
    """One budget's table: each rival's mIoU, its cost and its paired Δ against CE only at the
    same cost in every accounting (the CE run's budget and how much more it had)."""
    accs = [a for a in ACCOUNTINGS if any((r.get("vs_ce") or {}).get(a) for r in fr["points"])]
    lines = [f"Budget {budget:g} ({round(fr['iters'] * budget)} iterations):", "",
             "| arm | n | mIoU (mean ± sd) | cost (FLOPs) | " +
             " | ".join(f"Δ vs CE only at the same {_short(a)} [95% CI]" for a in accs) + " |",
             "| --- | ---: | ---: | ---: |" + " --- |" * len(accs)]
    for r in fr["points"]:
        if r["budget"] != budget or r["arm"] == BASELINE or not r.get("vs_ce"):
            continue
        s = r["summary"]
        sd = "" if s["sd"] != s["sd"] else f" ± {s['sd']:.2f}"
        flops = r["cost"].get("flops")
        lines.append(f"| `{r['arm']}` | {s['n']} | {s['mean']:.2f}{sd} | " +
                     (fmt_cost(flops, "flops") if flops else "") + " | " +
                     " | ".join(_cell(r["vs_ce"].get(a), a) for a in accs) + " |")
    return lines


def _present(fr: dict) -> list[str]:
    """The accountings some run of the frontier has a cost in (the cached one only with a
    teacher cache)."""
    return [a for a in ACCOUNTINGS if a != "flops_cached" or any(
        p["cost"].get(a) is not None for p in fr["points"])]


def _short(accounting: str) -> str:
    return {"flops": "FLOPs", "seconds": "seconds", "flops_teacher": "FLOPs + teacher",
            "flops_cached": "FLOPs, teacher cached"}[accounting]


def ce_curve_line(fr: dict) -> str:
    """CE only at each of its budgets: mIoU and cost, the curve every arm is met on."""
    ce = [r for r in fr["points"] if r["arm"] == BASELINE]
    return "CE only at each budget: " + "; ".join(
        f"b{r['budget']:g} {r['summary']['mean']:.2f}" + (
            f" ({fmt_cost(r['cost']['flops'], 'flops')})" if r["cost"].get("flops") else "")
        for r in ce) + "."


def frontier_lines(fr: dict, labels: dict[str, str], picture: str = "frontier.png") -> list[str]:
    """The report's frontier section: what was run, a table per budget, CE only's curve and the
    verdict in the chosen accounting (``labels``: each arm's), where another accounting says
    otherwise, and the picture's file (``picture``, written by :func:`frontier_figure`)."""
    acc, accs = fr["accounting"], _present(fr)
    lines = ["## Which method at my compute? Every arm at each budget, met by CE only at its cost",
             "", f"Budgets {', '.join(f'{b:g}' for b in fr['budgets'])} x {fr['iters']} "
             "iterations "
             "(each run its own poly decay); CE only also at budgets " +
             ", ".join(f"{b:g}" for b in fr["ce_budgets"]) + ": each distilling run is met by "
             "CE only's cheapest run of at least its cost (how much more it had in brackets). "
             "The weights were tuned at budget 1 only and apply at every budget. Accountings: " +
             "; ".join(f"{_short(a)}: {ACCOUNTINGS[a]}" for a in accs) + (
                 "" if fr.get("teacher_training_gflops") else
                 " (here the teacher was given, so the third equals the first)") + ".", ""]
    for b in fr["budgets"]:
        lines += [*budget_table(fr, b), ""]
    lines += [ce_curve_line(fr), ""]
    main = verdict_sentences(fr, acc, labels)
    lines.append(f"**Frontier verdict, by {ACCOUNTINGS[acc]}**: " + " ".join(main))
    others = [a for a in accs if a != acc]
    differ = [a for a in others if headline(fr, a) != headline(fr, acc)]
    for a in differ:
        lines += ["", f"In {ACCOUNTINGS[a]} the answer differs: " +
                  " ".join(verdict_sentences(fr, a, labels))]
    if not differ:
        won = headline(fr, acc)
        lines += ["", "The other accountings (" + ", ".join(ACCOUNTINGS[a] for a in others) +
                  ") agree: " + ("the same runs are resolved better than CE only at their cost."
                                 if won else "no run is resolved better than CE only at its "
                                 "cost in them either.")]
    return lines + ["", f"`{picture}`: mIoU (mean, 95% CI) against training cost, one line "
                    "per arm, the upper envelope dashed, one panel per accounting."]


def frontier_figure(path: Path, fr: dict, labels: dict[str, str]) -> dict:
    """``frontier.png`` from the frontier's points: one panel per accounting with costs."""
    panels: dict[str, dict[str, list]] = {}
    for acc, title in ACCOUNTINGS.items():
        lines: dict[str, list] = {}
        for r in fr["points"]:
            c, s = r["cost"].get(acc), r["summary"]
            if c is not None:
                lines.setdefault(labels.get(r["arm"]) or label(r["arm"]), []).append(
                    (c, s["mean"], s["low"], s["high"]))
        if lines:
            panels[title] = lines
    return frontier_plot(path, panels)
