"""The DPO stage: direct preference optimization of a LoRA adapter with TRL's `DPOTrainer`.

`python -m stages.dpo --config FILE` (or under `torchrun` / `accelerate launch`) trains on a
JSONL file of preference pairs in TRL's conversational format, `{"prompt": [messages],
"chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}], "task": ...}`.

The reference policy is the production policy, frozen:
- with `parent_adapter`, the policy is that adapter loaded trainable, and TRL 1.16's
  DPOTrainer (given a `PeftModel` and no `ref_model`) adds a copy of it named "ref" whose
  weights never train, and computes the reference log-probs with "ref" active;
- without one (no production adapter yet), a fresh LoRA is applied by TRL and the reference
  is the base with the adapter disabled, which is the production policy then.
`setup` checks that this holds (a "ref" adapter equal to the parent) before training.

The candidate is published to the adapter registry and a `StageResult` written to
`output_dir/result.json`; guards, checkpoints and resuming are shared with the other stages
(`stages.stage_run`, `stages.policy`). It does not build preference pairs (judges/ do) or evaluate.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stages import policy, stage_run, training_data
from stages.configs import DPOStageConfig
from stages.stage_io import StageResult

log = logging.getLogger(__name__)

STAGE = "dpo"


@dataclass
class DPOSession:
    """A set-up DPO run: the shared `StageRun` plus where the reference comes from."""

    run: stage_run.StageRun
    reference: str
    """"ref-adapter" (a frozen copy of the parent) or "base" (adapter disabled)."""


def _check_rows(rows: list[dict[str, Any]], path: str) -> None:
    for number, row in enumerate(rows, start=1):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(row[key], list) or not all(isinstance(m, dict) for m in row[key]):
                raise ValueError(f"{path}: row {number}: {key} must be a list of messages")
        for key in ("chosen", "rejected"):
            if row[key][-1].get("role") != "assistant":
                raise ValueError(f"{path}: row {number}: {key} must end with an assistant turn")


def setup(config: DPOStageConfig) -> DPOSession:
    """Load data, policy and trainer; check the reference; find a checkpoint to resume from."""
    from trl import DPOConfig, DPOTrainer

    inputs = stage_run.load_inputs(config, STAGE, ["prompt", "chosen", "rejected"], _check_rows)
    parent = policy.trainable_adapter_state(inputs.model) if inputs.peft_config is None else None
    args = DPOConfig(
        **stage_run.training_kwargs(config, bf16=inputs.bf16),
        max_length=stage_run.capped_max_length(config.max_length, inputs.model),
        beta=config.beta,
        loss_type=["sigmoid", "sft"] if config.sft_weight else ["sigmoid"],
        loss_weights=[1.0, config.sft_weight] if config.sft_weight else None,
    )
    dataset = training_data.to_dataset(inputs.rows)
    run = stage_run.build_run(STAGE, config, inputs, DPOTrainer, args, dataset)
    reference = policy.check_reference(run.trainer, parent)
    log.info("DPO reference policy: %s", reference)
    return DPOSession(run=run, reference=reference)


def train(session: DPOSession) -> StageResult:
    """Train, publish (unless a guard failed) and write result.json."""
    return stage_run.execute(session.run)


def cleanup(session: DPOSession | None) -> None:
    stage_run.cleanup(session.run if session else None)


def run(config: DPOStageConfig) -> StageResult:
    """The whole stage. A finished run (result.json present) is returned as it is."""
    return stage_run.run_stage(config, setup, train, cleanup)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m stages.dpo --config FILE`: exit 0 when the stage completed, 1 otherwise."""
    return stage_run.main(
        DPOStageConfig, run, argv, prog="python -m stages.dpo", description=__doc__.split("\n")[0]
    )


if __name__ == "__main__":
    sys.exit(main())
