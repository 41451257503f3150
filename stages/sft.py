"""The SFT stage: supervised fine-tuning of a LoRA adapter with TRL's `SFTTrainer`.

`python -m stages.sft --config FILE` (or under `torchrun` / `accelerate launch`) trains on a
JSONL file of chats, `{"messages": [..., {"role": "assistant", "content": target}], "task":
...}`, with the loss on the assistant turns only: `assistant_only_loss` when the chat
template marks them with `{% generation %}` blocks (the arith world's does), otherwise the
chat is split into a prompt (every turn but the last) and a completion (the last, assistant
turn) and TRL's completion-only loss applies. Training continues from the production adapter
(`parent_adapter`) or starts a fresh LoRA; the candidate is published to the adapter registry
and a `StageResult` is written to `output_dir/result.json`. Guards, checkpoints and resuming
are shared with the other stages (`stages.stage_run`, `stages.policy`).

It does not choose data, evaluate or promote the adapter (the daemon, judges and evals do).
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stages import stage_run, training_data
from stages.configs import SFTStageConfig
from stages.stage_io import StageResult

log = logging.getLogger(__name__)

STAGE = "sft"
PROTECT_CHATS = 320
"""The most chats of each side `protect_tasks` reads to find its directions."""


@dataclass
class SFTSession:
    """A set-up SFT run: the shared `StageRun` plus the chosen loss mode."""

    run: stage_run.StageRun
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

    inputs = stage_run.load_inputs(config, STAGE, ["messages"], _check_rows)
    rows, trainer_class = inputs.rows, SFTTrainer
    if config.distill_tasks or config.loss_average == "rows" or config.share_prefix:
        from stages import sft_distill

        if config.distill_tasks:
            rows = sft_distill.flag_rows(rows, config.distill_tasks)
        trainer_class = sft_distill.DistillingSFTTrainer
    if has_generation_blocks(inputs.tokenizer):
        loss_mode = "assistant_only"
        dataset = training_data.to_dataset(rows)
    else:
        loss_mode = "completion_only"
        log.info("the chat template has no generation blocks: training on the last turn")
        dataset = training_data.to_dataset([to_prompt_completion(r) for r in rows])
    args = SFTConfig(
        **stage_run.training_kwargs(config, bf16=inputs.bf16),
        max_length=stage_run.capped_max_length(config.max_length, inputs.model),
        assistant_only_loss=loss_mode == "assistant_only",
        completion_only_loss=True if loss_mode == "completion_only" else None,
        packing=False,
        train_sampling_strategy="group_by_length" if config.length_grouped else "random",
    )
    run = stage_run.build_run(STAGE, config, inputs, trainer_class, args, dataset)
    run.trainer.loss_average = config.loss_average
    run.trainer.data_collator = collator(run.trainer.data_collator, config)
    if config.protect_tasks:
        protect(run, rows, config)
    return SFTSession(run=run, loss_mode=loss_mode)


def protect(run: stage_run.StageRun, rows: list[dict[str, Any]], config: SFTStageConfig) -> None:
    """Fix and freeze `lora_A` so that `protect_tasks`' rows pass nearly as the base computes
    them (`stages.sft_protect`); a continued adapter's update is carried over onto the new
    directions."""
    from stages import sft_protect

    model = run.trainer.model
    protected = [r for r in rows if r.get("task") in config.protect_tasks]
    others = [r for r in rows if r.get("task") not in config.protect_tasks]
    if not protected or not others:
        raise ValueError(
            f"protect_tasks {list(config.protect_tasks)}: the training file needs rows of "
            f"those tasks and rows of others ({len(protected)} and {len(others)})"
        )
    tokenizer = run.trainer.processing_class

    def token_ids(chosen: list[dict[str, Any]]) -> list[list[int]]:
        """The chats' token ids; at most `PROTECT_CHATS` of them (a seeded sample), which
        bounds the base's passes over them."""
        if len(chosen) > PROTECT_CHATS:
            kept = sorted(random.Random(config.seed).sample(range(len(chosen)), PROTECT_CHATS))
            chosen = [chosen[i] for i in kept]
        return [
            list(tokenizer.apply_chat_template(r["messages"], return_dict=True)["input_ids"])
            for r in chosen
        ]

    sft_protect.fix_lora_a(
        model, token_ids(others), token_ids(protected), continued=config.parent_adapter is not None
    )


def collator(padded: Any, config: SFTStageConfig) -> Any:
    """The batch collator: TRL's padded one, or (`padding_free`) its padding-free twin, built
    here rather than through `SFTConfig.padding_free`, which TRL refuses beside `max_length`
    although its dataset preparation truncates either way; with `distill_tasks`, wrapped to
    carry each token's flag; with `share_prefix`, the chats' common prefix kept once."""
    chosen = padded
    if config.padding_free:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        chosen = DataCollatorForLanguageModeling(
            pad_token_id=padded.pad_token_id, padding_free=True
        )
    if config.distill_tasks:
        from stages import sft_distill

        chosen = sft_distill.with_flags(chosen)
    if config.share_prefix:  # after the flags, which are spread over the whole chats
        from stages import sft_prefix

        chosen = sft_prefix.with_shared_prefix(chosen)
    return chosen


def train(session: SFTSession) -> StageResult:
    """Train, publish (unless a guard failed) and write result.json."""
    return stage_run.execute(session.run)


def cleanup(session: SFTSession | None) -> None:
    stage_run.cleanup(session.run if session else None)


def run(config: SFTStageConfig) -> StageResult:
    """The whole stage. A finished run (result.json present) is returned as it is."""
    return stage_run.run_stage(config, setup, train, cleanup)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m stages.sft --config FILE`: exit 0 when the stage completed, 1 otherwise."""
    return stage_run.main(
        SFTStageConfig, run, argv, prog="python -m stages.sft", description=__doc__.split("\n")[0]
    )


if __name__ == "__main__":
    sys.exit(main())
