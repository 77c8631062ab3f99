"""Pictures a reader can read: one legend names every line, shared stages apart from the arms."""

import pytest
import json

import kaseg.engine.visualize as visualize


def _history(folder, iters, terms, miou):
    folder.mkdir(parents=True)
    lines = [json.dumps({"iter": i, **{t: 1.0 / i for t in terms}}) for i in range(1, iters + 1)]
    lines.append(json.dumps({"iter": iters, "val": {"miou": miou}}))
    (folder / "history.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_curves_name_every_line_and_keep_shared_stages_apart(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(visualize.plt, "close", lambda fig: figures.append(fig))
    arms = {"CE only": _history(tmp_path / "a", 5, ["loss", "ce"], 0.3),
            "the method": _history(tmp_path / "b", 5, ["loss", "ce", "adapt", "adapt_ratio"], 0.4)}
    shared = {"teacher": _history(tmp_path / "t", 20, ["loss", "ce"], 0.6),
              "autoencoder": _history(tmp_path / "e", 8, ["loss", "recon"], 0.0)}
    visualize.training_curves(tmp_path / "curves.png", arms, shared=shared)
    assert (tmp_path / "curves.png").stat().st_size > 1000
    fig = figures[-1]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "teacher", "autoencoder", "CE only", "the method"]
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles[:2] == ["shared stages: training loss", "shared stages: val mIoU"]
    assert {"arms: adapt", "arms: ce", "val mIoU"} <= set(titles)
    assert not any("ratio" in t for t in titles)
    # the shared row plots the teacher's 20 iterations, the arms' panels 5
    teacher_line = next(l for l in fig.axes[0].get_lines() if l.get_label() == "teacher")
    assert len(teacher_line.get_xdata()) == 20 and teacher_line.get_linestyle() == "--"


def _gain(arm, mean, low, high):
    return {"arm": arm, "diff": {"mean": mean, "low": low, "high": high, "n": 5}}


def test_a_wide_control_does_not_set_the_gain_axis_and_is_marked_at_its_edge(tmp_path):
    """A real data set's report: arms +1.6 to +5.3, a constant-target control at -21.5
    [-48.4, +5.3]. The axis is the arms' (with 0 and the +2.5 line), the control drawn at the
    left edge with its value; every label inside the picture."""
    from PIL import Image

    from kaseg.engine.visualize import paired_gain_plot

    rows = [_gain("kd_t2", 1.6, 0.4, 2.8), _gain("cwd", 5.3, 3.9, 6.7),
            _gain("ka", 2.2, 1.0, 3.4), _gain("ctrl_constant", -21.5, -48.4, 5.3)]
    labels = {"kd_t2": "+ logit KD (T = 2)", "cwd": "+ CWD (logits)", "ka": "+ both (the method)",
              "ctrl_constant": "control: adapters fitted to a constant target"}
    path = tmp_path / "gain.png"
    drawn = paired_gain_plot(path, {"paired gain vs CE only": rows}, labels,
                             controls={"ctrl_constant"})["paired gain vs CE only"]
    lo, hi = drawn["xlim"]
    span = 6.7 - 0.0
    assert lo == pytest.approx(0.0 - 0.08 * span) and hi == pytest.approx(6.7 + 0.08 * span)
    assert drawn["edge"] == {"ctrl_constant": "-21.5 [-48.4, +5.3]"}
    # not named a control, it is an outlier: its interval is over 4x the median width and
    # would stretch the axis past 3x what the other arms span: marked at the edge all the same
    drawn = paired_gain_plot(tmp_path / "g2.png", {"p": rows}, labels)["p"]
    assert drawn["xlim"] == pytest.approx((lo, hi))
    assert drawn["edge"] == {"ctrl_constant": "-21.5 [-48.4, +5.3]"}
    # a real but noisy arm (CWD on the folder set: +1.8 [-1.4, +5.1] beside arms 0.4 wide) is
    # drawn whole: with it the axis spans 6.53, under 3x the 2.83 of the others with 0 and +2.5
    noisy = [_gain("kd_t2", -0.09, -0.33, 0.15), _gain("ka", 0.01, -0.19, 0.21),
             _gain("cwd", 1.82, -1.44, 5.09)]
    drawn = paired_gain_plot(tmp_path / "g3.png", {"p": noisy}, labels)["p"]
    assert drawn["edge"] == {} and drawn["xlim"] == pytest.approx(
        (-1.44 - 0.08 * 6.53, 5.09 + 0.08 * 6.53))
    # the whole picture is kept: its width grows past the figure's when a label sticks out
    assert Image.open(path).size[0] >= 800


def test_the_frontier_marks_the_best_result_at_each_cost(tmp_path):
    """The upper envelope keeps a point only when it beats every cheaper one, whichever line it
    is on; one panel per accounting is written."""
    from kaseg.engine.visualize import frontier_plot, upper_envelope

    assert upper_envelope([(4, 50.0), (1, 40.0), (2, 39.0), (8, 50.0), (16, 52.0)]) == [
        (1, 40.0), (4, 50.0), (16, 52.0)]
    # arms at one budget: costs 0.1% apart are one cost, the best of them is the envelope's
    assert upper_envelope([(1, 40.0), (10.0, 42.1), (10.0, 46.1), (10.01, 47.8)]) == [
        (1, 40.0), (10.01, 47.8)]
    assert upper_envelope([(1, 40.0), (1, 40.0), (2, 45.0)]) == [(1, 40.0), (2, 45.0)]
    panels = {"GFLOPs": {"CE only": [(1, 40, 39, 41), (2, 44, 43, 45), (8, 47, 46, 48)],
                         "KD": [(3, 46, 45, 47), (9, 46.5, 45, 48)]},
              "seconds": {"CE only": [(1, 40, 39, 41)], "KD": [(1.5, 46, 45, 47)]}}
    drawn = frontier_plot(tmp_path / "frontier.png", panels)
    assert drawn["GFLOPs"] == [(1, 40), (2, 44), (3, 46), (8, 47)]
    assert drawn["seconds"] == [(1, 40), (1.5, 46)]
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
