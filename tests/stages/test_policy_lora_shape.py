"""A stage continues its parent adapter's LoRA, so a configured shape (rank, alpha, target
modules) that differs from the parent's is refused, naming the key and how to start fresh,
instead of silently not mattering; the configured dropout is applied to the continued
adapter; "all-linear" is compared as the layers it names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stages import policy, sft
from stages.stage_io import ConfigError
from tests.stages.test_stage_support import TARGETS, make_world, sft_config, sft_rows


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base and a parent adapter v1 of r=4, alpha=8 on q_proj and v_proj."""
    return make_world(tmp_path_factory.mktemp("lora-shape"), parent=True, train=sft_rows(8))


def load(world: dict[str, Path], r: int, alpha: int, dropout: float, targets: object) -> object:
    lora = policy.lora_config(r, alpha, dropout, targets)  # type: ignore[arg-type]
    model, peft_config, _ = policy.load_policy(
        str(world["base"]), str(world["parent"]), lora=lora, dtype=torch.float32
    )
    assert peft_config is None  # the parent's LoRA is continued, not a fresh one
    return model


@pytest.mark.parametrize(
    ("r", "alpha", "targets", "expected"),
    [
        (8, 8, TARGETS, "lora_r = 8 but the parent adapter v1 "),
        (4, 16, TARGETS, "lora_alpha = 16 but the parent adapter v1 "),
        (4, 8, ("q_proj",), "target_modules = ['q_proj'] but the parent adapter v1 "),
        (4, 8, ("all-linear",), "target_modules = ['down_proj', 'gate_proj'"),
    ],
)
def test_a_shape_other_than_the_parents_is_refused_naming_the_key(
    world: dict[str, Path], r: int, alpha: int, targets: tuple[str, ...], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(world, r, alpha, 0.0, targets)
    message = str(caught.value)
    assert expected in message, message
    assert "tutord rollback --to base" in message and "no parent_adapter" in message


def test_the_message_names_every_differing_key_with_the_parents_value(
    world: dict[str, Path],
) -> None:
    problem = policy.parent_lora_problem(
        world["parent"], r=16, alpha=32, target_modules=TARGETS, prefix="train.sft."
    )
    assert problem is not None
    assert "train.sft.lora_r = 16 but the parent adapter v1" in problem
    assert "has r=4" in problem
    assert "train.sft.lora_alpha = 32 but" in problem and "has lora_alpha=8" in problem
    assert "Set train.sft.lora_r = 4, train.sft.lora_alpha = 8 to continue it" in problem
    same = policy.parent_lora_problem(world["parent"], r=4, alpha=8, target_modules=TARGETS[::-1])
    assert same is None  # target modules compare as a set


def test_the_same_shape_continues_the_parent_with_the_configured_dropout(
    world: dict[str, Path],
) -> None:
    model = load(world, 4, 8, 0.25, TARGETS)
    config = model.peft_config["default"]  # type: ignore[attr-defined]
    assert config.r == 4 and config.lora_alpha == 8 and config.lora_dropout == 0.25
    dropouts = [
        m.p
        for n, m in model.named_modules()
        if n.endswith("lora_dropout.default")  # type: ignore[attr-defined]
    ]
    assert dropouts and all(p == 0.25 for p in dropouts)
    assert any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)  # type: ignore[attr-defined]


def test_a_stage_run_by_hand_refuses_before_training(
    world: dict[str, Path], tmp_path: Path
) -> None:
    config = sft_config(world, tmp_path, parent_adapter=str(world["parent"]), lora_r=8)
    with pytest.raises(ConfigError, match="lora_r = 8 but the parent adapter v1"):
        sft.run(config)
    assert not (tmp_path / "adapters").exists()
