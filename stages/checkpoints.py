"""Resuming a stage after an interruption: its newest complete Trainer checkpoint, and the
trained adapter's weights restored from it when the Trainer's own resume would miss them.

It does not write checkpoints (the Trainer does, under `output_dir/checkpoints`) or decide
whether to resume (`stages.stage_run.find_resume`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _complete(checkpoint: Path) -> bool:
    """The Trainer writes `trainer_state.json` last: a checkpoint with a readable one is whole."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (checkpoint / "adapter_model.safetensors").is_file()


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `output_dir/checkpoints`, or None. A checkpoint
    cut short by a kill (no readable `trainer_state.json`) is skipped."""
    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir() and _complete(child):
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def restore_adapter_from_checkpoint(model: Any, checkpoint: Path) -> None:
    """Load the trained ("default") adapter saved in `checkpoint` into `model`.

    When a PeftModel holds several adapters (DPO/GRPO add a frozen "ref" copy of the parent),
    a checkpoint keeps "default" at its top and the others in subfolders, and transformers'
    resume (5.19) then loads only the subfolders: the trained weights would silently restart
    from the parent. The Trainer restores optimizer, scheduler, RNG and step; this restores
    the weights it misses.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if not hasattr(model, "peft_config") or len(model.peft_config) < 2:
        return  # a single adapter: the Trainer loads it itself
    weights = load_file(str(checkpoint / "adapter_model.safetensors"))
    outcome = set_peft_model_state_dict(model, weights, adapter_name="default")
    unexpected = getattr(outcome, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"{checkpoint}: unexpected adapter weights {unexpected[:3]}")
    log.info("restored the trained adapter from %s", checkpoint)
