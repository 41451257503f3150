"""The RL stage: GRPO on a LoRA adapter with TRL's `GRPOTrainer` and verifiable or judged rewards.

`python -m stages.rl --config FILE` (or under `torchrun` / `accelerate launch`) samples
`num_generations` completions per prompt of a JSONL file `{"prompt": [messages], "reference":
"7", "task": "add"}`, scores them with the configured reward functions (import paths resolved
with importlib, e.g. "stages.world.verify:verify_integer" or "judges.verifiers:numeric_match";
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

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from stages import common
from stages.stage_io import ConfigError, StageResult, load_config, read_result

log = logging.getLogger(__name__)

STAGE = "rl"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class RLStageConfig:
    """Everything an RL run reads; loaded from a JSON object with these keys (all optional
    except `base_model`, `train_file` and `output_dir`; unknown keys are an error)."""

    base_model: str = ""
    """Folder (or hub id) of the base model and its tokenizer."""
    parent_adapter: str | None = None
    """Folder of the production adapter to continue from, or None for a fresh LoRA."""
    train_file: str = ""
    """JSONL file of `{"prompt": [messages], "reference": ..., "task": ...}` rows; every
    column but `prompt` reaches the reward functions as a keyword argument."""
    output_dir: str = ""
    """The run's work folder: checkpoints/, logs.jsonl, stage.log, stage_config.json (the
    config as run), launch.log (under the launcher), result.json."""
    adapters_dir: str | None = None
    """The adapter registry to publish into; None keeps the adapter in `output_dir/adapter`."""
    version: int | None = None
    """The version number to publish the candidate as (required with `adapters_dir`)."""
    parent_version: int | None = None
    """The parent's version for the manifest; read from the parent's manifest when None."""
    lora_r: int = 16
    """LoRA rank of a fresh adapter (a parent adapter keeps its own LoRA settings)."""
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    """Module names to adapt, or ["all-linear"]."""
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "linear"
    """A transformers scheduler name: linear, cosine, constant, constant_with_warmup, ..."""
    warmup_steps: int = 0
    max_steps: int = 100
    """Optimizer steps in all (a resumed run counts the steps before its checkpoint)."""
    per_device_batch_size: int = 16
    """Completions (not prompts) per device and micro-batch; per_device_batch_size x
    gradient_accumulation_steps x processes must be a multiple of `num_generations`."""
    gradient_accumulation_steps: int = 1
    seed: int = 0
    num_generations: int = 8
    """Completions sampled per prompt (the group whose rewards are compared)."""
    max_completion_length: int = 64
    """Longest completion in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the completions."""
    beta: float = 0.04
    """KL coefficient against the reference (the production policy); 0 turns the KL term off."""
    reward_functions: tuple[str, ...] = ("stages.world.verify:verify_integer",)
    """Reward functions as "module:function" import paths, each with the call shape
    `(prompts, completions, **columns) -> list[float | None]` (None abstains)."""
    reward_weights: tuple[float, ...] | None = None
    """One weight per reward function (TRL sums the weighted rewards); None: all 1."""
    gradient_checkpointing: bool = False
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto (float32 on CPU, bfloat16 on a GPU), float32 or bfloat16."""
    max_seconds: float | None = None
    """Wall-clock budget of the stage (from its start); training stops gracefully after the
    step that spends it and the adapter is still published (`stopped_early`)."""
    loss_explosion_factor: float | None = None
    """Fail the run when a logged loss exceeds this many times the first; None (the default
    for RL): off, since GRPO's loss is centred on zero and its scale says little. NaN/inf
    losses always fail the run."""
    save_steps: int = 50
    """Checkpoint every this many steps under `output_dir/checkpoints`."""
    save_total_limit: int | None = 2
    """Checkpoints kept (older ones are deleted); None keeps all."""
    resume: bool = True
    """Resume from the newest complete checkpoint in `output_dir` when there is one."""
    keep_checkpoints: bool = False
    """Keep `output_dir/checkpoints` after a completed run (they are deleted by default)."""
    logging_steps: int = 1
    """Log (and guard) the loss every this many steps."""
    threads: int = 1
    """torch threads per process."""


@dataclass
class RLSession:
    """A set-up RL run: the shared `StageRun`, the reference and the groups per step."""

    run: common.StageRun
    reference: str
    """"ref-adapter" (a frozen copy of the parent), "base" (adapter disabled) or "none"
    (beta = 0: no KL term)."""
    groups_per_step: int


def resolve_reward(path: str) -> Callable[..., list[float | None]]:
    """The callable named by "module:attribute" (dots allowed in the attribute part).

    >>> resolve_reward("stages.world.verify:verify_integer").__name__
    'verify_integer'
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"reward function {path!r}: expected 'module:function'")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"reward function {path!r} cannot be imported: {exc}") from None
    if not callable(target):
        raise ConfigError(f"reward function {path!r} is not callable")
    if not hasattr(target, "__name__"):  # TRL logs each reward function under its __name__
        scorer = target

        def named(*args: Any, **kwargs: Any) -> list[float | None]:
            return scorer(*args, **kwargs)

        named.__name__ = attribute.rsplit(".", 1)[-1]
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

    for name in ("base_model", "train_file", "output_dir"):
        if not getattr(config, name):
            raise ConfigError(f"{name} is required")
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
    completions *= common.world_size()
    if completions % config.num_generations:
        raise ConfigError(
            f"per_device_batch_size x gradient_accumulation_steps x processes = {completions} "
            f"completions per step is not a multiple of num_generations={config.num_generations}"
        )
    rewards = [resolve_reward(path) for path in config.reward_functions]
    started = common.begin(config, STAGE)
    parent_version = common.resolve_parent(
        config.parent_adapter, config.parent_version, config.base_model
    )
    rows, summary = common.load_rows(config.train_file, ["prompt"])
    _check_rows(rows, config.train_file)
    dtype, bf16 = common.resolve_precision(config.precision)
    lora = common.lora_config(
        config.lora_r, config.lora_alpha, config.lora_dropout, config.target_modules
    )
    model, peft_config, tokenizer = common.load_policy(
        config.base_model, config.parent_adapter, lora=lora, dtype=dtype
    )
    parent = common.trainable_adapter_state(model) if peft_config is None else None
    args = GRPOConfig(
        **common.training_kwargs(config, bf16=bf16),
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
        reward_weights=list(config.reward_weights) if config.reward_weights else None,
    )
    groups_per_step = completions // config.num_generations
    monitor = common.make_monitor(config, started, groups_per_step=groups_per_step)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=args,
        train_dataset=common.to_dataset(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[monitor],
    )
    common.quiet(trainer)
    reference = "none" if config.beta == 0.0 else common.check_reference(trainer, parent)
    log.info("GRPO reference policy for the KL term: %s", reference)
    run = common.StageRun(
        stage=STAGE,
        config=config,
        trainer=trainer,
        monitor=monitor,
        dataset=summary,
        parent_version=parent_version,
        resume_from=common.find_resume(config),
        started=started,
    )
    return RLSession(run=run, reference=reference, groups_per_step=groups_per_step)


def _rl_fields(monitor: common.StageMonitor) -> dict[str, Any]:
    return {
        "zero_variance_prompts": round(monitor.zero_variance),
        "prompts_seen": monitor.prompts,
    }


def train(session: RLSession) -> StageResult:
    """Train, publish (unless a guard failed) and write result.json."""
    return common.execute(session.run, extra=_rl_fields)


def cleanup(session: RLSession | None) -> None:
    common.cleanup(session.run if session else None)


def run(config: RLStageConfig) -> StageResult:
    """The whole stage. A finished run (result.json present) is returned as it is."""
    done = read_result(config.output_dir) if config.output_dir else None
    if done is not None:
        log.info("%s has a result already (%s): nothing to do", config.output_dir, done.status)
        return done
    session = None
    try:
        session = setup(config)
        return train(session)
    finally:
        cleanup(session)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m stages.rl --config FILE`: exit 0 when the stage completed, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m stages.rl", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="JSON config file")
    args = parser.parse_args(argv)
    config = load_config(RLStageConfig, args.config)
    if config.output_dir:
        common.configure_logging(Path(config.output_dir))
    result = run(config)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
