"""The report's words about the compute-matched control and the verdict, on rows made by hand."""

from kaseg.compare.arms import ARMS
from kaseg.compare.report import _verdict_lines
from kaseg.compare.runner import CompareSpec


def _row(arm, mean, low, high, cost=None, matched=None):
    r = {"arm": arm, "label": ARMS[arm].label, "values": [0.3, 0.3],
         "diff": {"mean": mean, "low": low, "high": high, "n": 5},
         "verdict": "better" if low > 0 else "worse" if high < 0 else "no resolved difference"}
    if cost is not None:
        r["train_gflops_x"] = cost
    if matched is not None:
        m, lo, hi = matched
        r["diff_matched"] = {"mean": m, "low": lo, "high": hi, "n": 5}
        r["verdict_matched"] = "better" if lo > 0 else "worse" if hi < 0 else "no resolved"
    return r


def _spec(*names):
    return CompareSpec(arms=[ARMS[n] for n in ("baseline", *names)])


def test_a_missing_compute_matched_control_is_said_in_the_verdict():
    """--controls asked for ce_matched but its run never finished: the verdict says it is
    against CE only (before, the clause about training longer was dropped silently)."""
    rows = [_row("baseline", 0, 0, 0, 1.0), _row("kd_t2", 1.2, 0.4, 2.0, 8.63)]
    text = "\n".join(_verdict_lines({"matched": None}, _spec("kd_t2", "ce_matched"), rows))
    assert "`ce_matched`): asked for, but it has **no finished run**" in text
    assert text.endswith("over 5 seeds; the compute-matched control (`ce_matched`) was asked for "
                         "but has no finished run, so this verdict is against CE only.")
    none = [_row("baseline", 0, 0, 0), _row("kd_t2", 0.1, -0.4, 0.6)]
    text = "\n".join(_verdict_lines({"matched": None}, _spec("kd_t2", "ce_matched"), none))
    assert "(no arm's 95% interval lies above 0 against it); the compute-matched control" in text
    # not asked for: nothing said about it
    text = "\n".join(_verdict_lines({"matched": None}, _spec("kd_t2"), rows))
    assert "ce_matched" not in text and text.endswith("over 5 seeds.")


def test_the_matched_control_is_named_as_the_costliest_arms_compute_with_each_arms_own():
    """The one control had the compute of the costliest arm: the report says so, never "the
    same compute", and gives each arm's own cost beside it."""
    rows = [_row("baseline", 0, 0, 0, 1.0),
            _row("kd_t2", 0.09, -0.64, 0.82, 8.63, (-7.82, -9.13, -6.52)),
            _row("cwd", 2.09, 0.5, 4.4, 8.63, (-0.5, -1.2, 0.3)),
            _row("af_dcd", -0.12, -0.23, -0.02, 10.98, (-8.04, -8.58, -7.5)),
            _row("ce_matched", 7.92, 7.34, 8.5, 10.98)]
    got = {"matched": {"iters": 1647, "ratio": 10.98, "costliest": "af_dcd"}}
    text = "\n".join(_verdict_lines(got, _spec("kd_t2", "cwd", "af_dcd", "ce_matched"), rows))
    assert "same compute" not in text
    assert ("**Training the student longer, for the compute of the costliest arm (`af_dcd`, "
            "10.98x), beats distilling it** with `kd_t2` (-7.82; its own cost 8.63x), `af_dcd` "
            "(-8.04; its own cost 10.98x)") in text
    assert ("No resolved difference from training the student longer for the compute of the "
            "costliest arm (`af_dcd`, 10.98x): `cwd` (its own cost 8.63x).") in text
    assert "a cheaper arm's control had more compute than the arm" in text
    # cwd is resolved above CE only but not above the control: no arm is the verdict's
    assert ("**Verdict: no arm is resolved better than CE only and than training the student "
            "longer for the compute of the costliest arm (`af_dcd`, 10.98x) on this data**") in text


def test_two_results_of_one_comparison_are_paired_seed_by_seed(tmp_path):
    """tools/results_diff.py: new - old per seed; an unchanged arm reads identical."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    def write(name, kd):
        rows = [{"arm": "baseline", "seeds": [0, 1, 2], "values": [30.0, 31.0, 32.0]},
                {"arm": "kd_t2", "seeds": [0, 1, 2], "values": kd}]
        (tmp_path / name).write_text(json.dumps({"rows": rows}))

    write("old.json", [30.0, 31.0, 32.0])
    write("new.json", [31.0, 32.5, 33.0])  # +1, +1.5, +1: mean 1.1667, sd 0.2887
    tool = Path(__file__).resolve().parents[2] / "tools" / "results_diff.py"
    out = subprocess.run([sys.executable, str(tool), str(tmp_path / "old.json"),
                          str(tmp_path / "new.json")], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[2] == "| `baseline` | 3 | 31.00 | 31.00 | +0.00 | [+0.00, +0.00] | identical |"
    # half-width t(2) x sd / sqrt(3) = 4.302653 x 0.288675 / 1.732051 = 0.7171
    assert out[3] == "| `kd_t2` | 3 | 31.00 | 32.17 | +1.17 | [+0.45, +1.88] | higher |"
