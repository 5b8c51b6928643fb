"""TrainConfig: every field validated with a named error, numbers in YAML read as numbers,
config files that cannot be read refused in one line."""
import math

import pytest
import torch

from helpers import raises_naming
from ssmkit.train import ConfigError, TrainConfig, load_config_file

TINY = dict(task="copying", layer="s4d", d_model=8, n_layers=1, d_state=4)


@pytest.mark.parametrize("field,value,exc", [
    ("lr", math.inf, ValueError), ("lr", math.nan, ValueError), ("lr", 0.0, ValueError), ("lr", "fast", TypeError),
    ("grad_clip", math.inf, ValueError), ("grad_clip", 0, ValueError),
    ("time_budget", math.nan, ValueError), ("time_budget", -1.0, ValueError),
    ("weight_decay", -0.1, ValueError), ("dropout", 1.0, ValueError),
    ("seed", "a", TypeError), ("seed", 1.5, TypeError), ("seed", -1, ValueError), ("seed", True, TypeError),
    ("d_state", "8", TypeError), ("d_state", 0, ValueError),
    ("init_from", 5, TypeError), ("task", 3, TypeError),
    ("epochs", 0, ValueError), ("batch_size", 2.0, TypeError), ("max_steps", -1, ValueError),
    ("early_stopping", -1, ValueError), ("warmup_fraction", 1.5, ValueError),
    ("ssm_lr", 0.0, ValueError), ("ssm_lr", math.inf, ValueError), ("ssm_weight_decay", -1.0, ValueError),
    ("compile", 1, TypeError), ("precision", "fp16", ValueError), ("pooling", "max", ValueError),
    ("task_options", [1, 2], TypeError), ("layer_options", "d_state=4", TypeError),
    ("backbone_options", 3, TypeError),
])
def test_every_field_is_checked_by_name(field, value, exc):
    with raises_naming(exc, field):
        TrainConfig(**{**TINY, field: value}).validate()
    with raises_naming(exc, field):  # the same from a mapping (a config file)
        TrainConfig.from_dict({**TINY, field: value})


@pytest.mark.parametrize("layer", ["s4", "s4d", "s5"])
def test_odd_state_size_refused_where_the_layer_keeps_conjugate_pairs(layer):
    with raises_naming(ValueError, "d_state"):
        TrainConfig(**{**TINY, "layer": layer, "d_state": 3}).validate()


def test_odd_state_size_accepted_where_the_layer_allows_it():
    TrainConfig(**{**TINY, "layer": "rtf", "d_state": 3}).validate()
    TrainConfig(**{**TINY, "layer": "mamba", "d_state": 3}).validate()


def test_unknown_layer_and_backbone_options_refused_by_name():
    with raises_naming(TypeError, "bogus"):
        TrainConfig(**{**TINY, "layer_options": {"bogus": 1}}).validate()
    with raises_naming(TypeError, "bogus"):
        TrainConfig(**{**TINY, "backbone_options": {"bogus": 1}}).validate()


def test_validation_leaves_the_random_stream_alone():
    torch.manual_seed(0)
    a = torch.rand(3)
    torch.manual_seed(0)
    TrainConfig(**TINY).validate()  # builds one block to check the layer options
    assert torch.equal(torch.rand(3), a)


def test_numbers_written_as_strings_are_numbers():
    cfg = TrainConfig.from_dict({**TINY, "lr": "1e-3", "ssm_lr": "2E-4", "time_budget": "60", "weight_decay": ".5"})
    assert (cfg.lr, cfg.ssm_lr, cfg.time_budget, cfg.weight_decay) == (1e-3, 2e-4, 60.0, 0.5)
    with raises_naming(TypeError, "lr"):
        TrainConfig.from_dict({**TINY, "lr": "1e-3x"})


def test_yaml_file_numbers_and_bad_files(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("task: copying\nlayer: s4d\nlr: 1e-3\nweight_decay: 5e-2\n")
    data = load_config_file(p)
    assert data["lr"] == "1e-3"  # what YAML 1.1 gives ...
    assert TrainConfig.from_dict(data).lr == 1e-3  # ... read as the number it is
    p.write_text("task: copying\nlayer: [s4d\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config_file(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(p)
    j = tmp_path / "c.json"
    j.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config_file(j)
    with pytest.raises(FileNotFoundError):
        load_config_file(tmp_path / "missing.yaml")


def test_from_dict_needs_a_mapping_and_known_keys():
    with raises_naming(TypeError, "config"):
        TrainConfig.from_dict([("lr", 1)])
    with raises_naming(ValueError, "d_modle"):
        TrainConfig.from_dict({"d_modle": 8})
