"""``kaseg study`` end to end on a tiny ladder: tables, JSON and figure from the runs, resumable."""

import json
import re

import pytest

import kaseg.compare.arms as arms_mod
import kaseg.presets.recipes as presets
import kaseg.presets.study as study
from kaseg.cli import main
from kaseg.core.config import AEConfig, Config, DataConfig, ModelConfig, TeacherConfig, TrainConfig


def tiny_config(quick=False, device="cpu"):
    data = DataConfig(image_size=32, train_count=16, val_count=4, crop_size=32)
    train = TrainConfig(iters=2, batch_size=4, val_every=2, val_batch_size=4, device="cpu")
    return Config(data=data, model=ModelConfig("tiny-student"), train=train,
                  teacher=TeacherConfig(iters=2), ae=AEConfig(epochs=0.5, min_iters=0))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_study_end_to_end_and_resume(tmp_path, monkeypatch, capsys, run_folder):
    monkeypatch.setattr(study, "demo_config", tiny_config)
    monkeypatch.setattr(presets, "init_schedule", lambda quick: (2, 0.1))
    monkeypatch.setattr(study, "WEIGHT_SCALES", [0.5, 1.0])
    monkeypatch.setattr(study, "TUNING_SEEDS", [100])
    monkeypatch.setattr(arms_mod, "AE_VARIANTS", {"plateau": dict(ae=dict(
        epochs=1.0, val_every_epochs=0.25, patience=1))})
    monkeypatch.setattr(study, "AE_VARIANTS", arms_mod.AE_VARIANTS)
    monkeypatch.setattr(study, "REGIMES", [
        study.Regime("a", 32, True, 2, ["baseline", "ka", "ka_ae_plateau", "ctrl_random_ae"]),
        study.Regime("b", 32, False, 4, ["baseline", "ka"], tune=False),
        study.Regime("few", 32, True, 2, ["baseline", "ka", "all_labels"], tune=False,
                     labeled_count=4)])
    out = tmp_path / "s"
    assert main(["study", "--out", str(out), "--seeds", "2", "--device", "cpu"]) == 0
    results = json.loads((out / "study.json").read_text())
    assert [r["name"] for r in results] == ["a", "b", "few"]
    a, b, few = results
    assert a["weight_scale"] in (0.5, 1.0) and set(a["tuning"]) == {"0.5", "1"}
    assert b["weight_scale"] == a["weight_scale"] and b["tuning"] == {}  # reused, not re-tuned
    assert a["adapt_weight"] == 50 * a["weight_scale"]
    arms = [r["arm"] for r in a["rows"]]
    assert arms == ["baseline", "ka", "ka_ae_plateau", "ctrl_random_ae"]
    for row in a["rows"][1:]:
        assert row["diff"]["n"] == 2 and row["seeds"] == [0, 1]
        diffs = [x - y for x, y in zip(row["values"], a["rows"][0]["values"])]
        assert row["diff"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert {"teacher", "init"} <= {r["arm"] for r in a["records"]}
    assert "init" not in {r["arm"] for r in b["records"]}  # from scratch
    # the plateau autoencoder stopped by itself and its error is reported
    assert a["ae"]["plateau"]["iters"] <= 4 and a["ae"]["default"]["rel_error"] > 0
    # limited labels: the students keep 4 labelled scenes, the rest is unlabelled (where a term can
    # use it); the upper bound keeps all
    import yaml
    ka = yaml.safe_load((run_folder(out / "few" / "runs", "ka", 0) / "config.yaml").read_text())["data"]
    top = yaml.safe_load((run_folder(out / "few" / "runs", "all_labels", 0) / "config.yaml").read_text())
    assert (ka["labeled_count"], ka["unlabeled_split"]) == (4, "train")
    assert (top["data"]["labeled_count"], top["data"]["unlabeled_split"]) == (None, None)
    assert "adapt_unlabeled" in (run_folder(out / "few" / "runs", "ka", 0) / "history.jsonl").read_text()
    assert few["labeled_count"] == 4 and few["code"]
    md = (out / "study.md").read_text()
    assert "## a:" in md and "## b:" in md and "paired Δ vs CE only" in md
    assert "Produced by `kaseg study --out s --seeds 2 --device cpu`" in md
    assert (out / "study.png").stat().st_size > 1000
    # resumable: a second call trains nothing and gives the same numbers
    histories = {p: p.read_text() for p in out.rglob("history.jsonl")}
    capsys.readouterr()
    assert main(["study", "--out", str(out), "--seeds", "2", "--device", "cpu"]) == 0
    assert {p: p.read_text() for p in out.rglob("history.jsonl")} == histories
    again = json.loads((out / "study.json").read_text())
    assert [r["rows"] for r in again] == [r["rows"] for r in results]
    # one regime alone: the others stay in study.md, from what they left
    assert main(["study", "--out", str(out), "--seeds", "2", "--device", "cpu",
                 "--regimes", "b"]) == 0
    merged = json.loads((out / "study.json").read_text())
    assert [r["name"] for r in merged] == ["a", "b", "few"]
    assert [r["rows"] for r in merged] == [r["rows"] for r in results]
    assert main(["study", "--out", str(out), "--regimes", "nope"]) == 2


def _row(arm, values, diff=None):
    row = {"arm": arm, "values": values, "summary": {"mean": sum(values) / len(values)}}
    if diff:
        row["diff"] = dict(zip(("mean", "low", "high", "n"), diff))
    return row


def test_the_schedule_ladders_table_and_which_scale_a_regime_reuses(tmp_path, monkeypatch):
    results = [
        {"name": "p150", "iters": 150, "ladder": "pretrained",
         "rows": [_row("baseline", [35.0, 36.0]), _row("ka", [35.5, 36.1], (0.3, -0.1, 0.7, 2))]},
        {"name": "p600", "iters": 600, "ladder": "pretrained",
         "rows": [_row("baseline", [38.0, 38.0]), _row("ka", [38.5, 38.9], (0.7, 0.2, 1.2, 2)),
                  _row("kd_t2", [40.0, 40.0], (2.0, 1.5, 2.5, 2))]},
        {"name": "lim150", "iters": 150, "ladder": "limited labels", "rows": []},  # one: none
        {"name": "other", "iters": 2400, "ladder": None, "rows": []},
    ]
    ladders = study.schedule_ladders(results)
    assert list(ladders) == ["pretrained"] and list(ladders["pretrained"]) == [150, 600]
    table = study.schedule_table(ladders)
    assert "| arm | 150 it | 600 it |" in table
    rows = {ln.split(" | ")[0].lstrip("| "): ln for ln in table if ln.startswith("| ")}
    assert rows[study.LABELS_STUDY["baseline"]].endswith("| 35.50 | 38.00 |")
    assert rows[study.LABELS_STUDY["ka"]].endswith("| +0.30 [-0.10, +0.70] (n=2) | "
                                                   "+0.70 [+0.20, +1.20] (n=2) |")
    assert rows[study.LABELS_STUDY["kd_t2"]].endswith("|  | +2.00 [+1.50, +2.50] (n=2) |")
    assert not any("differ" in ln for ln in table)  # no provenance given: no claim
    # a ladder's regimes measured on other machines (or from other starts) say so under their table
    same = {"machine": "CPU (A)", "code": "commit x", "teacher": 64.4, "init": 37.5}
    prov = {"pretrained": {150: same, 600: dict(same)}}
    assert not any("differ" in ln for ln in study.schedule_table(ladders, prov))
    prov["pretrained"][600] = dict(same, machine="CPU (B)", init=35.5)
    warn = [ln for ln in study.schedule_table(ladders, prov) if "differ" in ln]
    assert len(warn) == 1 and "(machine, init)" in warn[0]
    assert "600 it: CPU (B), commit x, teacher 64.4, start 35.5" in warn[0]
    recs = [dict(results[0], machine="CPU (A)", code="commit x",
                 records=[{"arm": "teacher", "miou": 0.644}, {"arm": "init", "miou": 0.375},
                          {"arm": "ka", "miou": 0.1}])]
    assert study.ladder_provenance(recs) == {"pretrained": {150: same}}
    study.schedule_plot(tmp_path / "s.png", ladders, study.LABELS_STUDY)
    assert (tmp_path / "s.png").stat().st_size > 1000

    # a regime reuses the scale of the regime it names (tuned_in), else the first regime's
    monkeypatch.setattr(study, "REGIMES", [study.Regime("first"), study.Regime("few"),
                                           study.Regime("few-600", tuned_in="few"),
                                           study.Regime("long", optional=True)])
    for name, scale in (("first", 0.3), ("few", 3.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "regime.json").write_text(json.dumps(
            {"name": name, "weight_scale": scale}))
    assert study.reference_scale(tmp_path, [], study.REGIMES[2]) == (3.0, {})
    assert study.reference_scale(tmp_path, [], study.REGIMES[3]) == (0.3, {})
    # an optional regime runs only when named
    assert [r.name for r in study.chosen_regimes()] == ["first", "few", "few-600"]
    assert [r.name for r in study.chosen_regimes(["long", "first"])] == ["first", "long"]


def test_reuse_seeds_the_regimes_this_run_does_not_run_and_refuses_bad_files(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(study, "REGIMES", [study.Regime("first"), study.Regime("long"),
                                           study.Regime("longer", tune=False)])
    rec = {"weight_scale": 0.3, "rows": [_row("baseline", [38.0])], "records": []}
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps([dict(rec, name="first"), dict(rec, name="long"),
                                   dict(rec, name="longer", weight_scale=9.0)]))
    out = tmp_path / "out"
    (out / "long").mkdir(parents=True)
    (out / "long" / "regime.json").write_text(json.dumps(dict(rec, name="long", weight_scale=1)))
    chosen = study.chosen_regimes(["longer"])
    assert study.reuse_records(out, earlier, chosen) == ["first"]  # long: present; longer: runs
    assert json.loads((out / "first" / "regime.json").read_text())["weight_scale"] == 0.3
    assert json.loads((out / "long" / "regime.json").read_text())["weight_scale"] == 1  # kept
    assert not (out / "longer").exists()
    # the regime that runs takes its scale from the reused first regime
    assert study.reference_scale(out, [], chosen[0]) == (0.3, {})
    assert study.reuse_records(out, earlier, chosen) == []  # a second time: nothing new
    for text, why in (("{", "not a readable study.json"), ('{"name": "first"}', "not a study.json"),
                      (json.dumps([dict(rec, name="nope")]), "unknown regime(s) ['nope']")):
        earlier.write_text(text)
        with pytest.raises(study.KasegError, match=r"--reuse .*earlier\.json: " + re.escape(why)):
            study.reuse_records(out, earlier, chosen)
    with pytest.raises(study.KasegError, match="not a readable"):
        study.reuse_records(out, tmp_path / "missing.json", chosen)


def test_long_regimes_checkpoint_midway_and_short_ones_only_at_the_end(tmp_path):
    """A killed 2400-iteration run resumes from its last checkpoint, not from iteration 0; the
    150/600 regimes keep the schedule their published numbers were measured with."""
    every = {r.iters: study.regime_spec(tmp_path, r, [0], [0.3]).arms_train["val_every"]
             for r in study.REGIMES if r.ladder == "pretrained"}
    assert every == {150: 150, 600: 600, 2400: 600, 9600: 600}


def test_retune_makes_a_reusing_regime_choose_its_own_scale(tmp_path, monkeypatch):
    """--retune: the regime tunes over every scale (here it runs nothing: the spec is captured)."""
    seen = {}

    def fake_run(rdir, cfg, spec, force, desc, lockstep, retry_failed=False):
        seen["scales"] = list(spec.weight_scales)
        raise RuntimeError("stop")

    monkeypatch.setattr(study, "run", fake_run)
    regime = study._on_ladder(2400)
    for retune, scales in ((False, [0.3]), (True, list(study.WEIGHT_SCALES))):
        with pytest.raises(RuntimeError, match="stop"):
            study.run_regime(tmp_path, regime, [0], "cpu", False, (0.3, {}), retune=retune,
                             cfg=study.base_config(96, "cpu"))
        assert seen["scales"] == scales
    with pytest.raises(study.KasegError, match=r"--retune 96px-pretrained-600: not among"):
        study.run_study(tmp_path, "cpu", regimes=["96px-pretrained-2400"],
                        retune=["96px-pretrained-600"])


def test_a_regime_whose_tuning_regime_has_no_results_is_an_error_naming_it(tmp_path, monkeypatch):
    """No silent stand-in: a regime that reuses the scale of a regime with no results here says
    which regime to run first, however many other regimes have results."""
    monkeypatch.setattr(study, "REGIMES", [study.Regime("first"), study.Regime("few"),
                                           study.Regime("few-600", tune=False, tuned_in="few"),
                                           study.Regime("long", tune=False)])
    (tmp_path / "first").mkdir()
    (tmp_path / "first" / "regime.json").write_text(json.dumps({"name": "first",
                                                                "weight_scale": 0.3}))
    ran = [{"name": "first", "weight_scale": 0.3}]
    with pytest.raises(study.KasegError, match=r"regime few-600 reuses the weight scale tuned "
                       r"in few, which has no results in .*: run it first \(--regimes few "
                       r"few-600\).*--reuse STUDY_JSON.*--retune few-600"):
        study.reference_scale(tmp_path, ran, study.REGIMES[2])
    assert study.reference_scale(tmp_path, ran, study.REGIMES[3]) == (0.3, {})
    (tmp_path / "first" / "regime.json").unlink()
    with pytest.raises(study.KasegError, match="regime long reuses the weight scale tuned in "
                       "first"):
        study.reference_scale(tmp_path, [], study.REGIMES[3])
    # a regime that tunes, or is re-tuned, reuses nothing: no error
    assert study.reference_scale(tmp_path, [], study.REGIMES[1]) is None


def test_a_regime_of_the_previous_release_is_found_under_its_new_name(tmp_path, caplog):
    """0.1.0's ``96px-few-labels*`` regimes are ``96px-limited-labels*``: the old name is taken
    by --regimes (with a warning), an old regime folder is renamed (never over a new one) and
    its record, like those of a reused study.json, reads under the new names."""
    assert [r.name for r in study.chosen_regimes(["96px-few-labels-600"])] == [
        "96px-limited-labels-600"]
    assert "regime 96px-few-labels-600 is now called 96px-limited-labels-600" in caplog.text
    record = {"name": "96px-few-labels", "ladder": "few labels", "weight_scale": 0.3,
              "iters": 150, "rows": [], "records": []}
    old = tmp_path / "out" / "96px-few-labels"
    (old / "runs" / "ka-s0").mkdir(parents=True)
    (old / "regime.json").write_text(json.dumps(record))
    (tmp_path / "out" / "96px-few-labels-600").mkdir()  # both names: the new one is kept
    (tmp_path / "out" / "96px-limited-labels-600").mkdir()
    assert study.upgrade_folders(tmp_path / "out") == ["96px-limited-labels"]
    assert not old.exists() and (tmp_path / "out" / "96px-limited-labels" / "runs" / "ka-s0").is_dir()
    assert (tmp_path / "out" / "96px-few-labels-600").is_dir()
    assert study.upgrade_folders(tmp_path / "out") == []
    known = study.known_results(tmp_path / "out", [])
    assert [(r["name"], r["ladder"]) for r in known] == [("96px-limited-labels", "limited labels")]
    later = study.chosen_regimes(["96px-limited-labels-600"])[0]
    assert study.reference_scale(tmp_path / "out", [], later) == (0.3, {})
    # a study.json of the previous release lends its regimes under the new names
    (tmp_path / "old.json").write_text(json.dumps([dict(record, name="96px-few-labels-2400")]))
    assert study.reuse_records(tmp_path / "elsewhere", tmp_path / "old.json", []) == [
        "96px-limited-labels-2400"]
    moved = json.loads((tmp_path / "elsewhere" / "96px-limited-labels-2400" / "regime.json")
                       .read_text())
    assert (moved["name"], moved["ladder"]) == ("96px-limited-labels-2400", "limited labels")


def test_budgets_reach_each_regime_and_its_frontier_is_written(tmp_path, monkeypatch):
    """``kaseg study --budgets``: each regime's comparison gets the budgets, and a regime record
    with a frontier gets the frontier's section in study.md."""
    from kaseg.compare.frontier import frontier

    seen = {}

    def fake_run(rdir, cfg, spec, force, desc, lockstep, retry_failed=False):
        seen["budgets"] = spec.budgets
        raise RuntimeError("stop")

    monkeypatch.setattr(study, "run", fake_run)
    with pytest.raises(RuntimeError, match="stop"):
        study.run_regime(tmp_path, study._on_ladder(150), [0], "cpu", False, (0.3, {}),
                         cfg=study.base_config(96, "cpu"), budgets=[1, 4])
    assert seen["budgets"] == [1.0, 4.0]
    recs = [{"arm": a, "budget": b, "seed": s, "miou": m / 100, "train_gflops": g,
             "train_seconds_alone": g}
            for s in range(2) for a, b, m, g in (("baseline", 1, 40 + s, 1),
                                                 ("baseline", 4, 45 + s, 4),
                                                 ("kd_t2", 1, 44 + 2 * s, 4))]
    fr = {**frontier(recs, "baseline", ["kd_t2"], {"kd_t2"}, None), "accounting": "flops",
          "budgets": [1.0], "ce_budgets": [1.0, 4.0], "iters": 150}
    text = "\n".join(study._frontier_part({"name": "r600", "frontier": fr}))
    assert "Budget 1 (150 iterations):" in text
    assert text.startswith("### Which method at my compute?")  # inside the regime's section
    assert "| `kd_t2` | 2 | 45.00 ± 1.41 | 4 GFLOPs | -0.50 [-6.85, +5.85] (CE b4, 1.00x) |" in text
    assert study._frontier_part({"frontier": None}) == []
    # the picture the section names is written (the study never wrote a frontier.png)
    assert "`frontier_r600.png`: mIoU (mean, 95% CI) against training cost" in text
    written = study.frontier_pictures(tmp_path, [{"name": "r600", "frontier": fr},
                                                 {"name": "plain", "frontier": None}])
    assert written == [tmp_path / "frontier_r600.png"]
    assert written[0].stat().st_size > 10_000


def test_arms_keep_only_the_named_ones_and_ce_only():
    regime = study._limited_on_ladder(600)
    assert [r.arms for r in study.only_arms([regime], ["kd_t2"])] == [["baseline", "kd_t2"]]
    assert study.only_arms([regime], None) == [regime]
    with pytest.raises(study.KasegError, match=r"--arms cwd: regime 96px-limited-labels-600 has "
                       r"none of them \(its arms: baseline kd_t2 ka ka_kd ctrl_random_ae\)"):
        study.only_arms([regime], ["cwd"])
