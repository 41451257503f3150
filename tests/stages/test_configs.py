"""The stage configs (stages/configs.py) and their JSON files (stages/stage_io.py): declared
once, validated by pydantic against the dataclass, errors that name the key. No torch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stages.configs import (
    STAGE_CONFIGS,
    DPOStageConfig,
    RLStageConfig,
    SFTStageConfig,
    field_docs,
    per_run_fields,
)
from stages.stage_io import ConfigError, config_from_dict, load_config, write_config


@pytest.mark.parametrize("cls", STAGE_CONFIGS.values(), ids=list(STAGE_CONFIGS))
def test_every_field_is_defaulted_and_documented(cls: type) -> None:
    config = cls()  # every field has a default
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        assert docs.get(f.name), f"{cls.__name__}.{f.name} has no attribute docstring"
    assert set(per_run_fields(cls)) == {
        "base_model",
        "parent_adapter",
        "train_file",
        "output_dir",
        "adapters_dir",
        "version",
        "parent_version",
        "seed",
        "threads",
    }
    assert dataclasses.is_dataclass(config) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_the_product_defaults() -> None:
    sft, dpo, rl = SFTStageConfig(), DPOStageConfig(), RLStageConfig()
    assert (sft.max_steps, sft.learning_rate, sft.per_device_batch_size) == (600, 3e-3, 16)
    assert (dpo.max_steps, dpo.learning_rate, dpo.beta) == (60, 1e-3, 0.1)
    assert (rl.max_steps, rl.learning_rate, rl.beta, rl.num_generations) == (80, 2e-4, 0.04, 8)
    assert (rl.per_device_batch_size, rl.temperature, rl.max_completion_length) == (32, 0.7, 16)
    assert sft.max_seconds == dpo.max_seconds == rl.max_seconds == 600.0


@pytest.mark.parametrize("cls", STAGE_CONFIGS.values(), ids=list(STAGE_CONFIGS))
def test_round_trip_through_a_file(cls: type, tmp_path: Path) -> None:
    config = dataclasses.replace(
        cls(), base_model="b", train_file="t", output_dir=str(tmp_path), version=3, seed=9
    )
    assert load_config(cls, write_config(config, tmp_path / "c.json")) == config
    assert not list(tmp_path.glob(".c.json.*"))  # written atomically, nothing left over


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"max_step": 3}, "unknown config key 'max_step' for RLStageConfig"),
        ({"max_steps": "3"}, r"'max_steps'.*integer"),  # strict: no string coercion
        ({"max_steps": 0}, r"'max_steps'.*greater than or equal to 1"),
        ({"learning_rate": True}, "'learning_rate'"),
        ({"precision": "fp16"}, "'precision'"),
        ({"target_modules": "q_proj"}, "'target_modules'"),
        ({"num_generations": 1}, "'num_generations'"),
        ({"reward_weights": [1, "x"]}, r"'reward_weights\.1'"),
    ],
)
def test_bad_keys_and_values_are_errors_naming_the_key(
    data: dict[str, object], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(RLStageConfig, data)


def test_a_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(SFTStageConfig, path)
    path.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(SFTStageConfig, path)
    path.write_text(json.dumps({"bogus": 1}))
    with pytest.raises(ConfigError, match=rf"{path}: unknown config key 'bogus'.*known keys"):
        load_config(SFTStageConfig, path)


def test_json_values_are_converted_to_the_declared_types(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"target_modules": ["q_proj"], "max_seconds": 5, "beta": 0}))
    loaded = load_config(DPOStageConfig, path)
    assert loaded.target_modules == ("q_proj",) and loaded.max_seconds == 5.0
    assert loaded.beta == 0.0 and isinstance(loaded.beta, float)


def test_bounds_hold_when_code_builds_a_config() -> None:
    with pytest.raises(ValueError, match=r"SFTStageConfig\.max_steps must be >= 1"):
        SFTStageConfig(max_steps=0)
    with pytest.raises(ValueError, match="lora_dropout"):
        dataclasses.replace(DPOStageConfig(), lora_dropout=1.0)
    assert RLStageConfig(max_seconds=None, loss_explosion_factor=None).max_seconds is None


def test_the_configs_import_no_training_library() -> None:
    code = (
        "import sys, stages.configs, stages.stage_io, stages.launch; "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
