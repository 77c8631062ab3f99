from pathlib import Path

import pytest

from kaseg.core.config import Config, diff_configs, dump_config, parse_overrides, to_dict
from kaseg.engine.experiment import load_config
from kaseg.core.errors import KasegError


def test_yaml_and_dotted_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: 3\ntrain:\n  iters: 50\nmodel:\n  name: tiny-teacher\n")
    cfg = load_config(p, ["train.iters=7", "train.lr=0.5", "data.root=/x", "train.grad_clip=1"])
    assert cfg.seed == 3 and cfg.train.iters == 7 and cfg.train.lr == 0.5
    assert cfg.model.name == "tiny-teacher" and cfg.data.root == "/x"
    assert cfg.train.grad_clip == 1.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.train.batch_size == Config().train.batch_size


def test_unknown_key_names_the_closest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  iter: 5\n")
    with pytest.raises(KasegError, match=r"unknown config key 'train.iter'; did you mean 'train.iters'"):
        load_config(p)
    with pytest.raises(KasegError, match="did you mean 'data.root'"):
        load_config(None, ["data.roots=/x"])


@pytest.mark.parametrize("override,match", [
    ("train.iters=abc", "'train.iters' must be int"),
    ("train.amp=3", "'train.amp' must be bool"),
    ("data.mean=[1,2]", "'data.mean' must be a list of 3"),
    ("train=5", "'train' must be a mapping"),
])
def test_wrong_types(override, match):
    with pytest.raises(KasegError, match=match):
        load_config(None, [override])


def test_round_trip_and_diff(tmp_path):
    cfg = load_config(None, ["train.iters=9"])
    p = tmp_path / "r.yaml"
    p.write_text(dump_config(cfg))
    again = load_config(p)
    assert again == cfg
    other = to_dict(load_config(None, ["train.iters=10", "seed=1"]))
    assert diff_configs(to_dict(cfg), other) == ["seed", "train.iters"]


def test_override_syntax_error():
    with pytest.raises(KasegError, match="key=value"):
        parse_overrides(["train.iters"])


def test_every_shipped_config_loads_and_the_paper_recipes_hold():
    root = Path(__file__).resolve().parents[2] / "configs"
    cfgs = {p.stem: load_config(p) for p in sorted(root.glob("*.yaml"))}
    assert {"paper_voc", "paper_cityscapes", "paper_context", "cirkd_cityscapes_r18",
            "cirkd_cityscapes_mbv2"} <= set(cfgs)
    # load_config checks every network name (check_model_name) when a config is read
    for name, crop, iters in [("paper_voc", 513, 30000), ("paper_cityscapes", 769, 90000),
                              ("paper_context", 513, 30000)]:
        c = cfgs[name]
        assert (c.train.batch_size, c.train.lr, c.train.weight_decay, c.train.poly_power) == (
            16, 0.007, 4e-5, 0.9)
        assert (c.data.crop_size, c.train.iters, c.data.scale_min, c.data.scale_max) == (
            crop, iters, 0.5, 2.0)
        assert c.model.name == "paper-student" and c.teacher.name == "paper-teacher"
    assert cfgs["paper_voc"].data.train_split == "trainaug"
    assert cfgs["paper_context"].data.dataset == "context"
    for name in ("cirkd_cityscapes_r18", "cirkd_cityscapes_mbv2"):
        c = cfgs[name]
        assert c.data.crop_size == (512, 1024) and c.train.iters == 40000
        assert c.teacher.name == "deeplabv3:resnet101" and c.teacher.output_stride == 8


@pytest.mark.parametrize("override,match", [
    ("distill.losses={kd: {}, nope: {}}", r"distill.losses: unknown loss 'nope'; known: \['adapt', 'af_dcd', 'affinity', 'cirkd_batch'"),
    ("distill.losses.kd.tau=2", r"distill.losses.kd: unknown option \['tau'\]; kd takes weight and temperature, grid, standardize$"),
    ("distill.losses.kd.weight=-1", r"distill.losses.kd.weight must be a number >= 0, got -1$"),
    ("distill.losses.kd.temperature=warm", r"distill.losses.kd.temperature must be float, got 'warm'$"),
    ("distill.losses.affinity.impl=fast", r"distill.losses.affinity: impl must be one of \('auto', 'dense', 'gram'\), got 'fast'$"),
    ("distill.losses=[kd]", r"'distill.losses' must be a mapping"),
    ("distill.control=placebo", "distill.control must be one of"),
    ("distill.losses.adapt.p=0.5", "distill.losses.adapt: p and q must be >= 1"),
    ("distill.p=0.5", "distill.losses.adapt: p and q must be >= 1"),  # the old key, upgraded
    ("data.dataset=coco", "data.dataset 'coco' is unknown; known: synthetic, folder, voc"),
    ("model.name=tiny-studnet", "model.name: unknown model 'tiny-studnet'.*did you mean 'tiny-student'"),
])
def test_values_are_checked_when_the_config_is_read(override, match):
    with pytest.raises(KasegError, match=match):
        load_config(None, [override])


def test_a_config_is_read_into_one_shape_for_every_term(tmp_path: Path):
    """distill.losses written out in full (every weight and option, in the registry's order,
    weight 0 dropped); a term's override changes that term only; a whole-set override
    replaces the set."""
    adapt = {"weight": 50.0, "reduction": "element", "p": 2.0, "q": 2.0}
    affinity = {"weight": 30.0, "reduction": "mse", "impl": "auto", "dense_max_positions": 1024}
    assert load_config(None).distill.losses == {"adapt": adapt, "affinity": affinity}
    got = load_config(None, ["distill.losses.kd.temperature=2", "distill.losses.adapt.weight=0"])
    assert got.distill.losses == {"affinity": affinity, "kd": {"weight": 1.0, "temperature": 2.0, "grid": "teacher", "standardize": False}}
    assert load_config(None, ["distill.losses={cwd: {weight: 2}}"]).distill.losses == {
        "cwd": {"weight": 2.0, "temperature": 4.0, "grid": "teacher"}}
    f = tmp_path / "e.yaml"
    f.write_text("distill:\n  losses:\n    kd:\n    adapt: {p: 1}\n")
    assert load_config(f).distill.losses == {"adapt": {**adapt, "p": 1.0},
                                             "kd": {"weight": 1.0, "temperature": 4.0, "grid": "teacher", "standardize": False}}


def test_old_distillation_keys_are_read_in_todays_form(tmp_path: Path):
    """Configs of earlier releases keep working: the method's keys (adapt_weight, p,
    affinity_impl, ...), the registry's extra_losses + loss_weights + loss_options, and the
    keys from before the registry (kd_weight, kd_temperature, ...) become distill.losses; an
    option of a loss the config does not select is dropped (it trained nothing)."""
    old = tmp_path / "old.yaml"
    old.write_text("distill:\n  adapt_weight: 20\n  p: 1.5\n  affinity_weight: 0\n"
                   "  extra_losses: [kd, cwd]\n  loss_weights: {cwd: 2.5}\n"
                   "  loss_options: {kd: {temperature: 3.0}}\n  skd_pool: 4\n")
    assert load_config(old).distill.losses == {
        "adapt": {"weight": 20.0, "reduction": "element", "p": 1.5, "q": 2.0},
        "kd": {"weight": 1.0, "temperature": 3.0, "grid": "teacher", "standardize": False}, "cwd": {"weight": 2.5, "temperature": 4.0, "grid": "teacher"}}
    older = tmp_path / "older.yaml"
    older.write_text("distill:\n  extra_losses: [kd, cwd]\n  kd_weight: 2.0\n"
                     "  kd_temperature: 4.0\n  cwd_temperature: 1.5\n  skd_pool: 2\n")
    assert load_config(older).distill.losses == {
        "adapt": {"weight": 50.0, "reduction": "element", "p": 2.0, "q": 2.0},
        "affinity": {"weight": 30.0, "reduction": "mse", "impl": "auto",
                     "dense_max_positions": 1024},
        "kd": {"weight": 2.0, "temperature": 4.0, "grid": "teacher", "standardize": False}, "cwd": {"weight": 3.0, "temperature": 1.5, "grid": "teacher"}}
    # the old keys on the command line too, over a file in today's form
    assert load_config(None, ["distill.adapt_weight=0", "distill.affinity_weight=0"]
                       ).distill.losses == {}


def test_a_run_started_with_old_keys_resumes_under_the_same_config(tmp_path: Path):
    from kaseg.engine.runs import prepare_run

    run = tmp_path / "run"
    run.mkdir()
    new = to_dict(load_config(None, ["distill.losses.kd.weight=1"]))
    stored = {**new, "distill": {k: v for k, v in new["distill"].items() if k != "losses"}}
    stored["distill"].update(adapt_weight=50.0, affinity_weight=30.0, extra_losses=["kd"],
                             kd_temperature=4.0, cwd_weight=3.0)
    (run / "config.yaml").write_text(dump_config_dict(stored))
    prepare_run(run, new)  # same experiment: resumes
    stored["distill"]["kd_temperature"] = 2.0  # a different one: refused, naming the key
    (run / "config.yaml").write_text(dump_config_dict(stored))
    with pytest.raises(KasegError, match=r"different config \(distill.losses.kd.temperature\)"):
        prepare_run(run, new)


def dump_config_dict(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


def test_a_run_started_before_a_key_existed_resumes_when_the_key_is_at_its_default(tmp_path):
    from kaseg.engine.runs import prepare_run

    run = tmp_path / "run"
    run.mkdir()
    new = to_dict(Config())
    old = {**new, "data": {k: v for k, v in new["data"].items() if k != "unlabeled_count"}}
    (run / "config.yaml").write_text(dump_config_dict(old))
    prepare_run(run, new)  # the key did not exist: the run used its default, 0
    changed = {**new, "data": {**new["data"], "unlabeled_count": 5}}
    with pytest.raises(KasegError, match="data.unlabeled_count"):
        prepare_run(run, changed)
