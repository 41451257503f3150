"""Self-distillation rows for the SFT stage: rows of `distill_tasks` teach the base's whole
next-token distribution instead of their target text.

Rehearsal rows (`daemon/rehearsal.py`) hold the base model's own greedy answers. Trained by
cross-entropy they only push the base's top token up at each position; the rest of the
distribution, which is most of what the base knew, is free to drift. On a row whose task
is in `SFTStageConfig.distill_tasks`, `DistillingSFTTrainer` replaces the cross-entropy by
the KL divergence from the base's distribution to the policy's at every loss position of
the row (the answer): KL(base || policy), with the base being the same model with every
adapter switched off (`PeftModel.disable_adapter`), so no second model is loaded. The
other rows keep TRL's cross-entropy; both are summed per loss token and divided by the
batch's loss tokens, as TRL does for cross-entropy alone. The base's forward pass runs on
the distilled rows only, without gradients.

A row's flag travels as a `distill` column: kept by the trainer's column filter and
stacked into the batch by a wrapped collator. It does not choose rows or weights, and
leaves TRL's loss untouched on batches without a distilled row.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
from trl import SFTTrainer

COLUMN = "distill"


def flag_rows(rows: list[dict[str, Any]], tasks: Collection[str]) -> list[dict[str, Any]]:
    """The rows with a `distill` column: True where the row's task is one of `tasks`."""
    return [{**row, COLUMN: row.get("task") in tasks} for row in rows]


def with_flags(collator: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> Callable:
    """`collator` that also stacks each example's `distill` flag into a bool tensor."""

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        flags = [bool(e.get(COLUMN, False)) for e in examples]
        batch = collator([{k: v for k, v in e.items() if k != COLUMN} for e in examples])
        batch[COLUMN] = torch.tensor(flags, dtype=torch.bool)
        return batch

    return collate


def token_losses(
    logits: torch.Tensor,
    base_logits: torch.Tensor,
    labels: torch.Tensor,
    distill: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses and their mask, aligned to next-token prediction: cross-entropy on
    the target token for ordinary rows, KL(base || policy) for distilled rows (`base_logits`
    holds the distilled rows' base logits, in order). Positions whose label is -100 count 0."""
    targets = labels[:, 1:]
    mask = targets != -100
    log_probs = logits[:, :-1].float().log_softmax(-1)
    losses = -log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    base_log_probs = base_logits[:, :-1].float().log_softmax(-1)
    losses[distill] = (base_log_probs.exp() * (base_log_probs - log_probs[distill])).sum(-1)
    return losses * mask, mask


class DistillingSFTTrainer(SFTTrainer):
    """TRL's `SFTTrainer`, with rows flagged `distill` taught by KL to the adapter-free model."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_collator = with_flags(self.data_collator)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, COLUMN]

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        distill = inputs.pop(COLUMN, None)
        if distill is None or not bool(distill.any()) or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        forward["use_cache"] = False
        logits = model(**forward).logits
        only = {
            k: (v[distill] if isinstance(v, torch.Tensor) and v.dim() > 0 else v)
            for k, v in forward.items()
        }
        with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
            base_logits = model(**only).logits
        losses, mask = token_losses(logits, base_logits, labels, distill.to(logits.device))
        tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = losses.sum() / torch.as_tensor(tokens).clamp(min=1)
        mode = "train" if self.model.training else "eval"
        if mode == "train" and "attention_mask" in inputs:
            self._total_train_tokens += int(inputs["attention_mask"].sum())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            kl_tokens = mask[distill].sum().clamp(min=1)
            self._metrics[mode]["distill_kl"].append((losses[distill].sum() / kl_tokens).item())
        return loss
