"""Config overrides keep each key's type; bad values and bad YAML are one-line errors."""

import pytest

from ssl_seg.config import apply_overrides, load_config, TrainConfig


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
    value = getattr(apply_overrides(TrainConfig(), [override]), key)
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
