"""Config overrides keep each key's type; bad values and bad YAML are one-line errors."""

import pytest

from ssl_seg.config import PseudoLabelConfig, apply_overrides, check_config, load_config, TrainConfig


PSEUDO_KEYS = {"sam", "tta", "refine", "pseudo_threshold"}  # keys of pseudo-label's own config


@pytest.mark.parametrize("override, key, expected", [
    ("steps=12", "steps", 12),
    ("lr=1e-3", "lr", 1e-3),              # YAML 1.1 reads this as text
    ("lr=2", "lr", 2.0),
    ("amp=false", "amp", False),
    ("init=123", "init", "123"),          # a path made of digits stays a path
    ("val_dir=2024", "val_dir", "2024"),
    ("model=dinov2-tiny", "model", "dinov2-tiny"),
    ("sam=null", "sam", None),
])
def test_overrides_take_the_field_type(override, key, expected):
    cfg = PseudoLabelConfig() if key in PSEUDO_KEYS else TrainConfig()
    value = getattr(apply_overrides(cfg, [override]), key)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("override", ["steps=abc", "steps=3.5", "steps=true", "amp=maybe", "amp=1",
                                      "seed=yes", "lr=fast", "lr=true"])
def test_bad_override_values_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ValueError, match=f"config key '{key}' expects "):
        apply_overrides(TrainConfig(), [override])


def test_yaml_values_are_checked_like_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("steps: 3.5\n")
    with pytest.raises(ValueError, match="'steps' expects an integer"):
        load_config(config)


@pytest.mark.parametrize("key, hint", [("batch_sise", "did you mean 'batch_size'"),
                                       ("threshold", "did you mean 'pseudo_threshold'"),
                                       ("colour", "known keys: ")])
def test_an_unknown_key_names_the_file_and_the_nearest_key(tmp_path, key, hint):
    config = tmp_path / "run.yaml"
    config.write_text(f"{key}: 3\n")
    with pytest.raises(ValueError, match=rf"config file {config}: unknown config key '{key}'; {hint}"):
        load_config(config, base=PseudoLabelConfig() if "pseudo" in hint else None)


def test_flags_override_yaml_and_set_overrides_both(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("steps: 5\nlr: 0.01\nseed: 3\n")
    cfg = apply_overrides(load_config(config, {"steps": 7, "lr": 0.02}), ["lr=0.03"])  # as the CLI does
    assert (cfg.steps, cfg.lr, cfg.seed, cfg.batch_size) == (7, 0.03, 3, TrainConfig().batch_size)


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("steps: 10\nlr: [1\n")
    with pytest.raises(ValueError, match=r"broken.yaml is not valid YAML at line \d") as error:
        load_config(config)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("override", ["steps=0", "batch_size=0", "tile_size=16", "lr=0", "val_every=0",
                                      "log_every=0", "image_every=0", "val_tta=3", "tta=4", "val_fraction=1",
                                      "val_fraction=2", "labeled_ratio=1.5", "consistency_threshold=-0.1",
                                      "ema_decay=1", "class_weights=inverse_log", "refine=sam2",
                                      "num_workers=-1", "cutmix_prob=2"])
def test_values_no_run_can_use_are_refused(override):
    key = override.split("=")[0]
    cfg = apply_overrides(PseudoLabelConfig() if key in PSEUDO_KEYS else TrainConfig(), [override])
    with pytest.raises(ValueError, match=f"config key '{key}' must be "):
        check_config(cfg)


def test_default_config_passes_its_own_check():
    assert check_config(TrainConfig()) == TrainConfig()


def test_a_shared_yaml_gives_each_command_its_own_keys(tmp_path):
    config = tmp_path / "project.yaml"
    config.write_text("steps: 7\nrefine: sam\ntta: 8\nseed: 2\n")
    train, pseudo = load_config(config), load_config(config, base=PseudoLabelConfig())
    assert (train.steps, train.seed) == (7, 2) and not hasattr(train, "refine")
    assert (pseudo.refine, pseudo.tta) == ("sam", 8)


def test_every_flag_is_declared_once_on_its_field():
    """The finetune/pretrain flags come from TrainConfig's declarations: help and default agree."""
    from ssl_seg.cli import build_parser, config_flags

    flags = {spec.name for spec in config_flags("pretrain")}
    assert {"model", "steps", "lr", "pseudo_labels", "labeled_ratio"} <= flags
    assert "pseudo_labels" not in {spec.name for spec in config_flags("finetune")}
    pretrain = next(a for a in build_parser()._subparsers._group_actions[0].choices["pretrain"]._actions
                    if a.dest == "labeled_ratio")
    assert pretrain.default is None and f"default: {TrainConfig.labeled_ratio}" in pretrain.help
