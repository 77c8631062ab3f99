"""Pictures a reader can read: one legend names every line, shared stages apart from the arms."""

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
