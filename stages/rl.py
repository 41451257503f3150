"""The RL stage: GRPO on a LoRA adapter with TRL's `GRPOTrainer` and verifiable or judged rewards.

`python -m stages.rl --config FILE` (or under `torchrun` / `accelerate launch`) samples
`num_generations` completions per prompt of a JSONL file `{"prompt": [messages], "reference":
"7", "task": "add"}`, scores them with the configured reward functions (import paths resolved
with importlib, e.g. "world.verify:verify_integer" or "judges.verifiers:numeric_match";
the extra columns reach them as keyword arguments) and updates the adapter with GRPO.

The KL term (beta > 0) is taken against the production policy, frozen:
- with `parent_adapter`, the policy is that adapter loaded trainable and TRL 1.16's
  GRPOTrainer (given a `PeftModel`, beta != 0) adds a copy named "ref" that never trains and
  computes the reference log-probs with it active;
- without one, TRL applies a fresh LoRA and the reference is the base with the adapter
  disabled, which is the production policy then.
`setup` checks this before training (as the DPO stage does).

The result counts the prompts whose group of completions all got the same reward (no
learning signal), from TRL's logged `frac_reward_zero_std`, and keeps the mean-reward curve.
It does not write reward functions (judges/ and the world do) or evaluate.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stages import policy, process, stage_run, training_data
from stages.configs import RLStageConfig
from stages.dotted import import_object
from stages.monitor import StageMonitor
from stages.stage_io import ConfigError, StageResult

log = logging.getLogger(__name__)

STAGE = "rl"


@dataclass
class RLSession:
    """A set-up RL run: the shared `StageRun`, the reference and the groups per step."""

    run: stage_run.StageRun
    reference: str
    """"ref-adapter" (a frozen copy of the parent), "base" (adapter disabled) or "none"
    (beta = 0: no KL term)."""
    groups_per_step: int


def resolve_reward(path: str) -> Callable[..., list[float | None]]:
    """The callable named by "module:attribute" (dots allowed in the attribute part).

    >>> resolve_reward("world.verify:verify_integer").__name__
    'verify_integer'
    """
    if path.count(":") != 1 or path.startswith(":") or path.endswith(":"):
        raise ConfigError(f"reward function {path!r}: expected 'module:function'")
    try:
        target = import_object(path)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"reward function {path!r} cannot be imported: {exc}") from None
    if not callable(target):
        raise ConfigError(f"reward function {path!r} is not callable")
    if not hasattr(target, "__name__"):  # TRL logs each reward function under its __name__
        scorer = target

        def named(*args: Any, **kwargs: Any) -> list[float | None]:
            return scorer(*args, **kwargs)

        named.__name__ = path.rsplit(".", 1)[-1].rsplit(":", 1)[-1]
        return named
    return target


def _check_rows(rows: list[dict[str, Any]], path: str) -> None:
    for number, row in enumerate(rows, start=1):
        prompt = row["prompt"]
        if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
            raise ValueError(f"{path}: row {number}: prompt must be a list of messages")


def setup(config: RLStageConfig) -> RLSession:
    """Load data, rewards, policy and trainer; check the reference; find a checkpoint."""
    from trl import GRPOConfig, GRPOTrainer

    if not config.reward_functions:
        raise ConfigError("reward_functions is empty")
    if config.reward_weights is not None and len(config.reward_weights) != len(
        config.reward_functions
    ):
        raise ConfigError(
            f"{len(config.reward_weights)} reward_weights for "
            f"{len(config.reward_functions)} reward_functions"
        )
    completions = config.per_device_batch_size * config.gradient_accumulation_steps
    completions *= process.world_size()
    if completions % config.num_generations:
        raise ConfigError(
            f"per_device_batch_size x gradient_accumulation_steps x processes = {completions} "
            f"completions per step is not a multiple of num_generations={config.num_generations}"
        )
    rewards = [resolve_reward(path) for path in config.reward_functions]
    inputs = stage_run.load_inputs(config, STAGE, ["prompt"], _check_rows)
    parent = policy.trainable_adapter_state(inputs.model) if inputs.peft_config is None else None
    args = GRPOConfig(
        **stage_run.training_kwargs(config, bf16=inputs.bf16),
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
        reward_weights=list(config.reward_weights) if config.reward_weights else None,
    )
    groups_per_step = completions // config.num_generations
    run = stage_run.build_run(
        STAGE,
        config,
        inputs,
        GRPOTrainer,
        args,
        training_data.to_dataset(inputs.rows),
        groups_per_step=groups_per_step,
        reward_funcs=rewards,
    )
    reference = "none" if config.beta == 0.0 else policy.check_reference(run.trainer, parent)
    log.info("GRPO reference policy for the KL term: %s", reference)
    return RLSession(run=run, reference=reference, groups_per_step=groups_per_step)


def _rl_fields(monitor: StageMonitor) -> dict[str, Any]:
    return {
        "zero_variance_prompts": round(monitor.zero_variance),
        "prompts_seen": monitor.prompts,
    }


def train(session: RLSession) -> StageResult:
    """Train, publish (unless a guard failed) and write result.json."""
    return stage_run.execute(session.run, extra=_rl_fields)


def cleanup(session: RLSession | None) -> None:
    stage_run.cleanup(session.run if session else None)


def run(config: RLStageConfig) -> StageResult:
    """The whole stage. A finished run (result.json present) is returned as it is."""
    return stage_run.run_stage(config, setup, train, cleanup)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m stages.rl --config FILE`: exit 0 when the stage completed, 1 otherwise."""
    return stage_run.main(
        RLStageConfig, run, argv, prog="python -m stages.rl", description=__doc__.split("\n")[0]
    )


if __name__ == "__main__":
    sys.exit(main())
