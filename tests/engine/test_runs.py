"""Run folders: which config changes make a run another run."""

import yaml

from kaseg.core.config import Config, to_dict
from kaseg.engine.runs import config_changes


def test_a_section_the_command_never_reads_does_not_make_another_run(tmp_path):
    """A shared CE start trained beside an autoencoder (``ae.weights`` set) is the same run for
    a comparison that needs none; a change it reads (the learning rate) still counts."""
    cfg = to_dict(Config())
    cfg["ae"]["weights"] = "cmp/ae"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    other = to_dict(Config())
    assert config_changes(tmp_path, other) == ["ae.weights"]  # a distillation reads it
    assert config_changes(tmp_path, other, "train") == []
    other["train"]["lr"] = 0.5
    assert config_changes(tmp_path, other, "train") == ["train.lr"]


def test_the_mask_stage_is_the_same_run_whatever_the_sections_it_never_reads_hold(tmp_path):
    """MasKD's tokens, trained in a comparison that also had the method's arms (``ae.weights``
    set, another student, distillation terms), are the same run for one without them; a change
    of what the stage reads (its own section, the teacher) still counts."""
    cfg = to_dict(Config())
    cfg["ae"]["weights"] = "cmp/ae"
    cfg["model"]["init_weights"] = "cmp/init/last.safetensors"
    cfg["distill"]["losses"] = {"maskd": {"weight": 3.0}, "adapt": {"weight": 15.0}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    other = to_dict(Config())
    assert config_changes(tmp_path, other, "train-masks") == []
    other["masks"]["lr"], other["teacher"]["name"] = 0.5, "tiny-student"
    assert config_changes(tmp_path, other, "train-masks") == ["masks.lr", "teacher.name"]


def test_a_distillation_run_without_the_methods_terms_ignores_the_autoencoder(tmp_path):
    """A KD run of a comparison that also had the method's arms (``ae.weights`` set) is the same
    run in one without them; a run of the method, and the autoencoder's own stage, still see
    an autoencoder change."""
    cfg = to_dict(Config())
    cfg["ae"]["weights"] = "cmp/ae"
    cfg["distill"]["losses"] = {"kd": {"weight": 1.0}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    other = to_dict(Config())
    other["distill"]["losses"] = {"kd": {"weight": 1.0}}
    assert config_changes(tmp_path, other) == []
    assert config_changes(tmp_path, other, "train-ae") == ["ae.weights"]
    cfg["distill"]["losses"] = other["distill"]["losses"] = {"adapt": {}, "affinity": {}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert config_changes(tmp_path, other) == ["ae.weights"]
