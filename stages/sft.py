"""The SFT stage: supervised fine-tuning of a LoRA adapter with TRL's `SFTTrainer`.

`python -m stages.sft --config FILE` (or under `torchrun` / `accelerate launch`) trains on a
JSONL file of chats, `{"messages": [..., {"role": "assistant", "content": target}], "task":
...}`, with the loss on the assistant turns only: `assistant_only_loss` when the chat
template marks them with `{% generation %}` blocks (the arith world's does), otherwise the
chat is split into a prompt (every turn but the last) and a completion (the last, assistant
turn) and TRL's completion-only loss applies. Training continues from the production adapter
(`parent_adapter`) or starts a fresh LoRA; the candidate is published to the adapter registry
and a `StageResult` is written to `output_dir/result.json`. Guards, checkpoints and resuming
are shared with the other stages (`stages/common.py`).

It does not choose data, evaluate or promote the adapter (the daemon, judges and evals do).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from stages import common
from stages.stage_io import ConfigError, StageResult, load_config, read_result

log = logging.getLogger(__name__)

STAGE = "sft"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class SFTStageConfig:
    """Everything an SFT run reads; loaded from a JSON object with these keys (all optional
    except `base_model`, `train_file` and `output_dir`; unknown keys are an error)."""

    base_model: str = ""
    """Folder (or hub id) of the base model and its tokenizer."""
    parent_adapter: str | None = None
    """Folder of the production adapter to continue from, or None for a fresh LoRA."""
    train_file: str = ""
    """JSONL file of `{"messages": [...], "task": ...}` rows."""
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
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "linear"
    """A transformers scheduler name: linear, cosine, constant, constant_with_warmup, ..."""
    warmup_steps: int = 0
    max_steps: int = 100
    """Optimizer steps in all (a resumed run counts the steps before its checkpoint)."""
    per_device_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    seed: int = 0
    max_length: int = 1024
    """Longest tokenized chat; longer ones are truncated."""
    gradient_checkpointing: bool = False
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto (float32 on CPU, bfloat16 on a GPU), float32 or bfloat16."""
    max_seconds: float | None = None
    """Wall-clock budget of the stage (from its start); training stops gracefully after the
    step that spends it and the adapter is still published (`stopped_early`)."""
    loss_explosion_factor: float | None = 10.0
    """Fail the run when a logged loss exceeds this many times the first; None: off."""
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
class SFTSession:
    """A set-up SFT run: the shared `StageRun` plus the chosen loss mode."""

    run: common.StageRun
    loss_mode: str


def has_generation_blocks(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template marks assistant turns with `{% generation %}`."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return "generation" in template and "endgeneration" in template


def to_prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    """`messages` -> `prompt` (every turn but the last) + `completion` (the last turn), the
    other columns kept; for templates without generation blocks.

    >>> row = to_prompt_completion({"messages": [{"role": "user", "content": "1+1"},
    ...                                          {"role": "assistant", "content": "2"}]})
    >>> row["prompt"], row["completion"]
    ([{'role': 'user', 'content': '1+1'}], [{'role': 'assistant', 'content': '2'}])
    """
    out = {k: v for k, v in row.items() if k != "messages"}
    messages = row["messages"]
    out["prompt"] = messages[:-1]
    out["completion"] = messages[-1:]
    return out


def _check_rows(rows: list[dict[str, Any]], path: str) -> None:
    for number, row in enumerate(rows, start=1):
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{path}: row {number}: messages must be a non-empty list")
        if messages[-1].get("role") != "assistant":
            raise ValueError(f"{path}: row {number}: the last message must be the assistant's")


def setup(config: SFTStageConfig) -> SFTSession:
    """Load data, policy and trainer; find a checkpoint to resume from."""
    from trl import SFTConfig, SFTTrainer

    for name in ("base_model", "train_file", "output_dir"):
        if not getattr(config, name):
            raise ConfigError(f"{name} is required")
    started = common.begin(config, STAGE)
    parent_version = common.resolve_parent(
        config.parent_adapter, config.parent_version, config.base_model
    )
    rows, summary = common.load_rows(config.train_file, ["messages"])
    _check_rows(rows, config.train_file)
    dtype, bf16 = common.resolve_precision(config.precision)
    lora = common.lora_config(
        config.lora_r, config.lora_alpha, config.lora_dropout, config.target_modules
    )
    model, peft_config, tokenizer = common.load_policy(
        config.base_model, config.parent_adapter, lora=lora, dtype=dtype
    )
    if has_generation_blocks(tokenizer):
        loss_mode = "assistant_only"
        dataset = common.to_dataset(rows)
    else:
        loss_mode = "completion_only"
        log.info("the chat template has no generation blocks: training on the last turn")
        dataset = common.to_dataset([to_prompt_completion(r) for r in rows])
    args = SFTConfig(
        **common.training_kwargs(config, bf16=bf16),
        max_length=config.max_length,
        assistant_only_loss=loss_mode == "assistant_only",
        completion_only_loss=True if loss_mode == "completion_only" else None,
        packing=False,
    )
    monitor = common.make_monitor(config, started)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[monitor],
    )
    common.quiet(trainer)
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
    return SFTSession(run=run, loss_mode=loss_mode)


def train(session: SFTSession) -> StageResult:
    """Train, publish (unless a guard failed) and write result.json."""
    return common.execute(session.run)


def cleanup(session: SFTSession | None) -> None:
    common.cleanup(session.run if session else None)


def run(config: SFTStageConfig) -> StageResult:
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
    """`python -m stages.sft --config FILE`: exit 0 when the stage completed, 1 otherwise."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.sft", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, type=Path, help="JSON config file")
    args = parser.parse_args(argv)
    config = load_config(SFTStageConfig, args.config)
    if config.output_dir:
        common.configure_logging(Path(config.output_dir))
    result = run(config)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
