from __future__ import annotations

from pathlib import Path

import pytest

from skinlesion.errors import ConfigError
from skinlesion.train.config import list_presets, load_config, parse_overrides


def test_every_preset_validates() -> None:
    presets = list_presets()
    assert {"cpu", "demo", "tiny"} <= set(presets)
    for name in presets:
        cfg = load_config(name)
        assert cfg.name


def test_overrides_are_applied_and_yaml_typed() -> None:
    cfg = load_config("tiny", ["train.epochs=3", "model.input_size=[32, 40]", "data.split.seed=9"])
    assert cfg.train.epochs == 3
    assert cfg.model.input_size == (32, 40)
    assert cfg.data.split.seed == 9


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        load_config(p)


def test_bad_value_names_field_and_value() -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs.*got 0"):
        load_config("tiny", ["train.epochs=0"])


def test_fractions_must_leave_training_data() -> None:
    with pytest.raises(ConfigError, match="val_fraction \\+ data.split.test_fraction must be < 1"):
        load_config("tiny", ["data.split.val_fraction=0.5", "data.split.test_fraction=0.5"])


def test_missing_preset_lists_presets() -> None:
    with pytest.raises(ConfigError, match="neither a file nor a preset.*tiny"):
        load_config("no-such-preset")


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["train.epochs"])


def test_isic_format_requires_ground_truth() -> None:
    with pytest.raises(ConfigError, match="needs data.ground_truth and data.images"):
        load_config("tiny", ["data.format=isic2018"])
