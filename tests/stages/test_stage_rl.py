"""The RL (GRPO) stage on the world's tiny random model: rewards resolved from import paths,
the KL reference is the production policy (frozen parent adapter, or the base), the adapter
trains and the base does not, and prompts without reward variance are counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stages import rl
from stages.stage_io import ConfigError
from tests.stages.test_stage_support import (
    adapter_weights,
    base_params_unchanged,
    check_published,
    check_result_file,
    folder_digest,
    make_world,
    rl_rows,
    stage_config,
    train_fresh_lora,
    weights_differ,
)

SUPPORT = "tests.stages.test_stage_support"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("rl-world"), parent=True, train=rl_rows(32))


def config(world: dict[str, Path], out: Path, **kw: object) -> rl.RLStageConfig:
    """Three steps to candidate v2, two groups of four completions a step, a KL term and two
    rewards; `kw` overrides fields."""
    values: dict[str, object] = {
        "version": 2,
        "max_steps": 3,
        "per_device_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 8,
        "beta": 0.1,
        "reward_functions": (f"{SUPPORT}:digit_share", "world.verify:verify_integer"),
    }
    return stage_config(rl.RLStageConfig, world, out, **{**values, **kw})


def test_continues_from_parent_with_the_parent_as_kl_reference(
    world: dict[str, Path], tmp_path: Path
) -> None:
    before = folder_digest(world["base"])
    parent_weights = adapter_weights(world["parent"])
    cfg = config(world, tmp_path, parent_adapter=str(world["parent"]))
    session = rl.setup(cfg)
    assert session.reference == "ref-adapter"
    assert session.groups_per_step == 2
    trainer = session.run.trainer
    result = rl.train(session)
    from peft import get_peft_model_state_dict

    ref_state = get_peft_model_state_dict(trainer.model, adapter_name="ref")
    assert all(torch.equal(ref_state[k], parent_weights[k]) for k in parent_weights)
    assert base_params_unchanged(trainer.model, world["base"])
    rl.cleanup(session)

    data = check_result_file(Path(cfg.output_dir))
    assert data["stage"] == "rl" and data["status"] == "completed"
    # At step 1 the policy is the parent: a KL of 0 means the reference is the parent too
    # (against the bare base it would not be, the parent's weights being far from zero).
    logs = [json.loads(line) for line in (Path(cfg.output_dir) / "logs.jsonl").open()]
    assert logs[0]["step"] == 1 and logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert logs[-2]["kl"] > 0  # and the policy moved away from it
    check_published(result, "rl", parent=1)
    assert weights_differ(adapter_weights(Path(result.adapter_path or "")), parent_weights)
    assert result.steps == 3
    assert [s for s, _ in result.reward_curve] == [1, 2, 3]
    assert result.prompts_seen == 6
    assert result.zero_variance_prompts is not None
    assert 0 <= result.zero_variance_prompts <= 6
    assert result.metrics["kl"] >= 0.0 and "rewards/digit_share/mean" in result.metrics
    assert result.tokens_seen > 0
    assert folder_digest(world["base"]) == before


def test_fresh_lora_kl_against_the_base(world: dict[str, Path], tmp_path: Path) -> None:
    weights = train_fresh_lora(rl, config(world, tmp_path, version=1, reward_weights=(1.0, 2.0)))
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)


@pytest.mark.parametrize(("reward", "zero"), [("constant", 6), ("alternating", 0)])
def test_prompts_without_reward_variance_are_counted(
    world: dict[str, Path], tmp_path: Path, reward: str, zero: int
) -> None:
    cfg = config(
        world,
        tmp_path,
        adapters_dir=None,
        version=None,
        beta=0.0,
        reward_functions=(f"{SUPPORT}:{reward}",),
    )
    result = rl.run(cfg)
    assert result.ok, result.reason
    assert result.prompts_seen == 6 and result.zero_variance_prompts == zero


def test_reward_function_paths_are_checked(world: dict[str, Path], tmp_path: Path) -> None:
    assert rl.resolve_reward("judges.verifiers:numeric_match").__name__ == "numeric_match"
    for bad in ("judges.verifiers", "no_such_module:f", "judges.verifiers:nope"):
        with pytest.raises(ConfigError, match="reward function"):
            rl.resolve_reward(bad)
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        rl.setup(config(world, tmp_path, per_device_batch_size=6))
    with pytest.raises(ConfigError, match="reward_weights"):
        rl.setup(config(world, tmp_path, reward_weights=(1.0,)))
