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
