"""Shared-prefix batches for padding-free SFT (`SFTStageConfig.share_prefix`): the tokens
every chat of a batch starts with are computed once per batch instead of once per chat.

A chat template renders a default system prompt before every conversation (SmolLM2's
"You are a helpful AI assistant named SmolLM, ..." is 24 of a 44-token sums chat), so
in a padding-free batch of 16 chats the same tokens run through the model 16 times. Here
the first chat keeps them and the others start after them: each later chat attends to
the first chat's prefix tokens and to its own, causally, through a 4-D attention mask,
and keeps its own positions (the prefix's length on), so every chat sees exactly the keys,
values and positions it saw alone. The loss, its gradient and the model's outputs at every
kept token are the same as without sharing, up to floating-point summation order; the
prefix's gradient is the sum of what each chat sends it, as it would be. LoRA dropout, if
any, draws one mask for the shared prefix instead of one per chat.

The prefix stops before the token that predicts any chat's first loss target, so every
loss is predicted from a chat's own tokens. It does not choose rows, weights or the loss
(`stages/sft_distill.py` computes that, with the mask); batches whose chats share fewer
than `MIN_SHARED` tokens are left as they are.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch

MASK = "attention_mask"
PREFIX = "shared_prefix"
"""The batch key holding how many leading tokens its chats share (a 0-d tensor)."""
MIN_SHARED = 2
DROPPED = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")
"""Padding-free keys for varlen kernels, which the shared layout no longer matches."""
SPREAD = ("labels", "distill")
"""Per-token columns cut like the `input_ids`."""


def chat_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """Per token of padding-free rows (shaped like `position_ids`), whether a chat starts
    there: where its position is not one more than the token before's (0, or after a shared
    prefix the prefix's length)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[..., 1:] = position_ids[..., 1:] != position_ids[..., :-1] + 1
    return starts


def chat_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each chat in a padding-free row (`chat_starts`)."""
    edges = [*chat_starts(position_ids[0]).nonzero().flatten().tolist(), position_ids.shape[1]]
    return list(itertools.pairwise(edges))


def shared_length(
    input_ids: torch.Tensor, labels: torch.Tensor, bounds: list[tuple[int, int]]
) -> int:
    """How many leading tokens every chat has in common, short of the token that predicts a
    chat's first loss target (and of each chat's last token)."""
    ids, targets = input_ids[0].tolist(), labels[0] != -100
    limit = min(end - start - 1 for start, end in bounds)
    for start, end in bounds:
        first = targets[start:end].nonzero()
        if first.numel():
            limit = min(limit, int(first[0]) - 1)
    first_start, _ = bounds[0]
    length = 0
    while length < limit and all(
        ids[start + length] == ids[first_start + length] for start, _ in bounds[1:]
    ):
        length += 1
    return length


def share_prefix(batch: dict[str, Any]) -> dict[str, Any]:
    """A padding-free batch (one row of chats end to end, with `position_ids`) with the
    chats' common prefix kept in the first chat only, a boolean 4-D `attention_mask`
    (True: may attend) that lets every chat see it and the prefix's length as `PREFIX`;
    unchanged when fewer than `MIN_SHARED` tokens are shared or the batch holds one chat."""
    if MASK in batch or "position_ids" not in batch:
        return batch
    bounds = chat_bounds(batch["position_ids"])
    if len(bounds) < 2:
        return batch
    prefix = shared_length(batch["input_ids"], batch["labels"], bounds)
    if prefix < MIN_SHARED:
        return batch
    kept = torch.ones(batch["input_ids"].shape[1], dtype=torch.bool)
    for start, _ in bounds[1:]:
        kept[start : start + prefix] = False
    out = {k: v for k, v in batch.items() if k not in DROPPED}
    for key in ("input_ids", "position_ids", *SPREAD):
        if key in batch:
            out[key] = batch[key][:, kept].contiguous()
    chat = torch.repeat_interleave(
        torch.arange(len(bounds)), torch.tensor([end - start for start, end in bounds])
    )[kept]
    index = torch.arange(chat.numel())
    causal = index[None, :] <= index[:, None]
    visible = (chat[None, :] == chat[:, None]) | (index[None, :] < prefix)
    out[MASK] = (causal & visible)[None, None]
    out[PREFIX] = torch.tensor(prefix)
    return out


def with_shared_prefix(collator: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> Callable:
    """A padding-free `collator` whose batches go through `share_prefix`."""

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        return share_prefix(collator(examples))

    return collate


def model_mask(mask: torch.Tensor, attention: str, dtype: torch.dtype) -> torch.Tensor:
    """The boolean mask as the model's attention takes it: as it is for "sdpa", additive
    (0 where allowed, the dtype's minimum elsewhere) for "eager"."""
    if attention == "sdpa":
        return mask
    if attention == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    raise ValueError(f"share_prefix needs sdpa or eager attention, not {attention!r}")


def select(forward: dict[str, Any], chosen: torch.Tensor) -> dict[str, Any]:
    """The model inputs of the tokens `chosen` (a boolean per token) of a shared-prefix
    batch, with the mask cut to them: the prefix must be among them for the chats to see
    it."""
    mask = forward[MASK][:, :, chosen][:, :, :, chosen]
    return {
        "input_ids": forward["input_ids"][:, chosen],
        "position_ids": forward["position_ids"][:, chosen],
        MASK: mask,
        "use_cache": False,
    }
