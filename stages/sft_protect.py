"""Protected rows: a fresh adapter's `lora_A` fixed where the task's inputs are and general
text's are not, so general text passes through the adapted model nearly as through the base.

A LoRA layer changes its output by `B A x`. `fix_lora_a` runs the base (adapters off) over
two sets of chats, the task rows and the protected rows (general text: the rehearsal rows,
the base's own answers to general prompts), accumulates each adapted layer's input second
moment for each set, and sets the layer's `lora_A` to the `r` directions along which the
task inputs' energy is largest relative to the protected inputs' (generalized
eigenvectors, each moment scaled to unit trace), scaled to a fresh `lora_A`'s output size on
the task inputs; `lora_A` is then frozen and only `lora_B` trains. On the real-model demo's
first cycle those directions held about 3% of the task chats' input energy and 0.04% of the
general chats' (README, "Training stages"): a fixed-`A` LoRA (LoRA-FA) whose `A` is chosen from
data, in the spirit of InfLoRA and LoRA-Null.

Keeping `lora_A` off the general inputs' main directions instead (Gradient Projection Memory
on `A`) did not help there: the task chats' inputs lie in the same main directions as
general text's. The saved adapter is an ordinary LoRA adapter.

It does not choose the rows (the SFT stage passes them, `protect_tasks`), and a continued
adapter is re-fixed on its own rows' directions, its parent's update carried over onto them
(`fix_lora_a(..., continued=True)`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from stages.generate.hf import right_pad

log = logging.getLogger(__name__)


def lora_layers(model: Any) -> dict[str, Any]:
    """The model's LoRA-wrapped linear layers by module name."""
    return {
        name: module
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and module.lora_A
    }


def second_moments(
    model: Any, token_rows: Sequence[Sequence[int]], layers: dict[str, Any], batch: int = 16
) -> dict[str, torch.Tensor]:
    """Per layer, `X^T X` of its inputs over every token of `token_rows` (padding left out),
    the adapters disabled. Layers fed the same input (q, k, v) share one tensor."""
    moments: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}  # layer -> the first layer seen with the same input
    real: list[torch.Tensor] = []  # the current batch's non-padding positions
    # This batch's inputs by address, each held so that its memory is not reused meanwhile.
    seen: dict[int, tuple[torch.Tensor, str]] = {}

    def hook(name: str) -> Any:
        def record(_module: Any, args: tuple[Any, ...]) -> None:
            key = args[0].data_ptr()
            if key not in seen:
                x = args[0].detach()
                seen[key] = (x, name)
                kept = x[real[0]].float()
                moments[name] = moments.get(name, 0) + kept.T @ kept
            source[name] = seen[key][1]

        return record

    handles = [
        layer.base_layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()
    ]
    try:
        with torch.no_grad(), model.disable_adapter():
            ordered = sorted(token_rows, key=len)  # little padding
            for start in range(0, len(ordered), batch):
                ids, mask = right_pad(ordered[start : start + batch], 0)
                real[:] = [mask.bool()]
                seen.clear()
                model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return {name: moments[first] for name, first in source.items()}


def discriminative_directions(
    task: torch.Tensor, general: torch.Tensor, rank: int, ridge: float = 1e-4
) -> tuple[torch.Tensor, float, float]:
    """The `rank` orthonormal directions (rows) along which the task inputs' second moment is
    largest relative to the general inputs' (generalized eigenvectors, each moment scaled to
    unit trace, `ridge` times the mean eigenvalue added to the general one), and the share
    of each moment's energy they hold (task, general)."""
    s = (task / torch.trace(task)).double()
    g = (general / torch.trace(general)).double()
    d = g.shape[0]
    g = g + ridge * torch.eye(d, dtype=g.dtype) / d
    inv = torch.linalg.inv(torch.linalg.cholesky(g))
    _, vectors = torch.linalg.eigh(inv @ s @ inv.T)
    q, _ = torch.linalg.qr(inv.T @ vectors.flip(1)[:, :rank])
    return q.T.float(), float(torch.trace(q.T @ s @ q)), float(torch.trace(q.T @ g @ q))


def fix_lora_a(
    model: Any,
    task_rows: Sequence[Sequence[int]],
    general_rows: Sequence[Sequence[int]],
    continued: bool = False,
) -> None:
    """Set every `lora_A` to its layer's discriminative directions (task rows against
    general rows) and freeze it: only `lora_B` trains. A fresh `lora_A` is scaled so that
    its output on the task inputs is as large as the random one's; a continued adapter's
    keeps its parent's size, and its `lora_B` becomes the parent's update seen through the
    new directions (`B A0 A^T (A A^T)^-1`: the parent's change on inputs in their span)."""
    layers = lora_layers(model)
    task = second_moments(model, task_rows, layers)
    general = second_moments(model, general_rows, layers)
    done: dict[int, tuple[torch.Tensor, float, float]] = {}
    for name, layer in layers.items():
        for adapter, a in layer.lora_A.items():
            key = id(task[name])
            if key not in done:
                done[key] = discriminative_directions(task[name], general[name], layer.r[adapter])
            q = done[key][0]
            before = a.weight.detach().clone()
            with torch.no_grad():
                if continued:
                    c2 = float((before * before).sum()) / q.shape[0]  # |A0|^2 / r
                    b = layer.lora_B[adapter].weight
                    b.copy_(b @ before @ q.T / c2**0.5)
                    a.weight.copy_(q * c2**0.5)
                else:
                    wanted = torch.trace(before @ task[name] @ before.T)
                    a.weight.copy_(q * torch.sqrt(wanted / torch.trace(q @ task[name] @ q.T)))
            a.weight.requires_grad_(False)
    held = list(done.values())
    log.info(
        "lora_A fixed on discriminative directions (%d task chats against %d protected "
        "chats): they hold %.1f%% of the task inputs' energy and %.3f%% of the protected "
        "inputs' (mean over layers); only lora_B trains",
        len(task_rows),
        len(general_rows),
        100 * sum(h[1] for h in held) / len(held),
        100 * sum(h[2] for h in held) / len(held),
    )
