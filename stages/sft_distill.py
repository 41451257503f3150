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
the distilled rows only (their tokens alone when the batch is padding-free), without
gradients. Both passes compute logits only at the positions whose next token is a loss
target (`logits_to_keep`), as TRL's fused head does for cross-entropy.

With `SFTStageConfig.loss_average = "rows"` the trainer averages each chat's token losses
first and then the chats (`row_weights`), on every batch, distilled or not.

A row's flag travels as a `distill` column: kept by the trainer's column filter and
spread over the row's tokens by a wrapped collator. It does not choose rows or weights, and
leaves TRL's loss untouched on batches without a distilled row.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
from trl import SFTTrainer

from stages import sft_prefix

COLUMN = "distill"


def flag_rows(rows: list[dict[str, Any]], tasks: Collection[str]) -> list[dict[str, Any]]:
    """The rows with a `distill` column: True where the row's task is one of `tasks`."""
    return [{**row, COLUMN: row.get("task") in tasks} for row in rows]


def with_flags(collator: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> Callable:
    """`collator` that also returns each token's `distill` flag (its example's), shaped like
    the batch's `input_ids`: one row per example, or one row of every example end to end
    when the collator is padding-free."""

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        flags = [bool(e.get(COLUMN, False)) for e in examples]
        batch = collator([{k: v for k, v in e.items() if k != COLUMN} for e in examples])
        rows, width = batch["input_ids"].shape
        if rows == len(examples):
            per_token = torch.tensor(flags, dtype=torch.bool)[:, None].expand(rows, width)
        else:  # padding-free: the examples one after another, then padding
            lengths = torch.tensor([len(e["input_ids"]) for e in examples])
            spread = torch.repeat_interleave(torch.tensor(flags, dtype=torch.bool), lengths)
            per_token = torch.zeros(1, width, dtype=torch.bool)
            per_token[0, : spread.numel()] = spread
        batch[COLUMN] = per_token.contiguous()
        return batch

    return collate


def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """The sequence positions whose next token is a loss target in any row of `labels`,
    ascending: where the logits are needed (`logits_to_keep`), as TRL's fused head computes
    them for cross-entropy alone."""
    return (labels[:, 1:] != -100).any(0).nonzero().squeeze(-1)


def token_losses(
    logits: torch.Tensor,
    base_logits: torch.Tensor,
    labels: torch.Tensor,
    distill: torch.Tensor,
    keep: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses and their mask at the positions `keep` (`loss_positions`), whose
    logits `logits` holds (rows x positions x vocabulary): cross-entropy on the next token,
    or KL(base || policy) where the position is flagged in `distill` (shaped like `labels`).
    `base_logits` holds the base's logits at the flagged kept positions, in order (any shape
    ending in the vocabulary). Positions whose next label is -100 count 0."""
    targets = labels[:, 1:][:, keep]
    mask = targets != -100
    log_probs = logits.float().log_softmax(-1)
    losses = -log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    rows, positions = distill[:, :-1][:, keep].nonzero(as_tuple=True)
    base = base_logits.reshape(-1, base_logits.shape[-1]).float().log_softmax(-1)
    losses[rows, positions] = (base.exp() * (base - log_probs[rows, positions])).sum(-1)
    return losses * mask, mask


def base_inputs(
    forward: dict[str, Any], distill: torch.Tensor, keep: torch.Tensor, prefix: int = 0
) -> dict[str, Any]:
    """The model inputs of the flagged tokens alone, with the kept positions among them as
    `logits_to_keep`: their rows when the batch is padded (every token of a flagged row is
    flagged, so the rows' logits at `keep` are already in the flagged positions' order),
    their tokens (whole sequences, with their positions) when it is padding-free, and with
    the batch's first `prefix` tokens too (`stages/sft_prefix.py`) when its chats share
    them."""
    if prefix:  # shared-prefix batch: the flagged tokens and the prefix they all see
        flagged = distill[0]
        chosen = flagged.clone()
        chosen[:prefix] = True
        index = chosen.cumsum(0) - 1
        return {**sft_prefix.select(forward, chosen), "logits_to_keep": index[keep[flagged[keep]]]}
    if "attention_mask" in forward:
        rows = distill.any(-1)
        chosen = {
            k: (v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 else v)
            for k, v in forward.items()
        }
        return {**chosen, "logits_to_keep": keep}
    flagged = distill[0]
    index = flagged.cumsum(0) - 1  # a flagged token's place among the flagged tokens
    return {
        "input_ids": forward["input_ids"][distill][None],
        "position_ids": forward["position_ids"][distill][None],
        "use_cache": False,
        "logits_to_keep": index[keep[flagged[keep]]],
    }


def row_weights(labels: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """Per-target weights, shaped like `labels[:, 1:]` (the position predicting each label):
    1 / (the targets of its chat) / (the chats with a target), so that every chat of the
    batch counts the same whatever its length. A padded batch has a chat per row; a
    padding-free one (`position_ids` given) starts a chat wherever its position does not
    follow the one before (0, or after a shared prefix its length)."""
    targets = labels[:, 1:] != -100
    if position_ids is None:
        owner = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)
    else:
        owner = (sft_prefix.chat_starts(position_ids).cumsum(-1) - 1)[:, 1:]
    counts = torch.bincount(owner[targets], minlength=int(owner.max()) + 1)
    chats = (counts > 0).sum().clamp(min=1)
    return targets * (1.0 / counts.clamp(min=1))[owner] / chats


class DistillingSFTTrainer(SFTTrainer):
    """TRL's `SFTTrainer`, with rows flagged `distill` taught by KL to the adapter-free model.
    Its data collator must be wrapped by `with_flags` (`stages.sft.setup` does it). With
    `loss_average = "rows"` every batch's loss is the mean over its chats of each chat's mean
    token loss (`row_weights`), distilled or not, instead of the mean over all its loss
    tokens."""

    loss_average: str = "tokens"

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
        prefix = int(inputs.pop(sft_prefix.PREFIX, 0))
        distilled = distill is not None and bool(distill.any())
        by_rows = self.loss_average == "rows"
        if not (distilled or by_rows or prefix) or return_outputs:
            if prefix:
                raise ValueError("a shared-prefix batch has no outputs to return")
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        forward["use_cache"] = False
        if prefix:
            forward[sft_prefix.MASK] = sft_prefix.model_mask(
                forward[sft_prefix.MASK], model.config._attn_implementation, model.dtype
            )
        keep = loss_positions(labels)
        logits = model(**forward, logits_to_keep=keep).logits
        if distilled:
            distill = distill.to(logits.device)  # type: ignore[union-attr]
            with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
                base_logits = model(**base_inputs(forward, distill, keep, prefix)).logits
        else:
            distill = torch.zeros_like(labels, dtype=torch.bool)
            base_logits = logits.new_zeros(0, logits.shape[-1])
        losses, mask = token_losses(logits, base_logits, labels, distill, keep)
        if by_rows:
            padding_free = prefix > 0 or "attention_mask" not in forward
            weights = row_weights(labels, forward["position_ids"] if padding_free else None)
            loss = (losses * weights[:, keep]).sum()
            if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
                loss = loss / self.current_gradient_accumulation_steps  # as the Trainer would
        else:
            tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = losses.sum() / torch.as_tensor(tokens).clamp(min=1)
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            padding = None if prefix else inputs.get("attention_mask")
            counted = inputs["input_ids"].numel() if padding is None else padding.sum()
            self._total_train_tokens += int(counted)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if distilled:  # as on batches TRL's loss takes: no KL to log without a distilled row
            with torch.no_grad():
                flagged = distill[:, :-1][:, keep]
                kl_tokens = mask[flagged].sum().clamp(min=1)
                kl = (losses[flagged].sum() / kl_tokens).item()
            self._metrics[mode]["distill_kl"].append(kl)
        return loss
