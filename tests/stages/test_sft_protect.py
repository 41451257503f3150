"""Protected rows (`protect_tasks`): a fresh adapter's `lora_A` is fixed on the directions
where the task rows' inputs are and the protected rows' are not, and frozen, so the protected
rows pass through the adapted model nearly as through the base while `lora_B` trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from stages import sft
from stages.sft_protect import discriminative_directions, fix_lora_a, lora_layers
from tests.stages.test_sft_distill import divergence_from_base
from tests.stages.test_stage_support import (
    adapter_weights,
    make_world,
    problems,
    sft_config,
)


def rows(task: str, family: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` chats of an arith family, labelled `task`."""
    return [
        {"messages": [*p.messages(), {"role": "assistant", "content": p.answer}], "task": task}
        for p in problems(n, task=family, seed=seed)
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Task rows are sums; protected rows ("rehearsal") are products, other text."""
    return make_world(
        tmp_path_factory.mktemp("protect-world"),
        parent=True,
        mixed=rows("add", "add", 16) + rows("rehearsal", "mul", 16),
        only_task=rows("add", "add", 16),
    )


def test_the_directions_are_where_the_task_inputs_are_and_the_general_ones_are_not() -> None:
    task = torch.diag(torch.tensor([1.0, 1.0, 10.0, 10.0]))
    general = torch.diag(torch.tensor([10.0, 10.0, 1.0, 0.001]))
    q, held_task, held_general = discriminative_directions(task, general, rank=1)
    assert q.shape == (1, 4)
    assert torch.allclose(q.abs(), torch.tensor([[0.0, 0.0, 0.0, 1.0]]), atol=1e-4)
    assert held_task == pytest.approx(10 / 22, rel=1e-3)
    assert held_general < 1e-3
    q2, _, _ = discriminative_directions(task, general, rank=2)
    assert torch.allclose(q2 @ q2.T, torch.eye(2), atol=1e-5)  # orthonormal rows


def lora(weights: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    return {k: w for k, w in weights.items() if part in k}


def test_lora_a_is_fixed_and_the_protected_rows_stay_near_the_base(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """The same cross-entropy training on every row, with and without the products
    protected: protected, `lora_A` is the same after 2 and 6 steps while `lora_B` moves,
    and the policy moves far less on the products."""
    common = {"train": "mixed", "learning_rate": 0.01}
    protect = {"protect_tasks": ("rehearsal",)}
    short = sft.run(sft_config(world, tmp_path / "p2", max_steps=2, **protect, **common))
    long = sft.run(sft_config(world, tmp_path / "p6", max_steps=6, **protect, **common))
    plain = sft.run(sft_config(world, tmp_path / "plain", max_steps=6, **common))
    assert short.status == long.status == plain.status == "completed"
    a2, a6 = adapter_weights(short.adapter_path), adapter_weights(long.adapter_path)
    assert lora(a2, "lora_A") and all(torch.equal(w, a6[k]) for k, w in lora(a2, "lora_A").items())
    assert any(not torch.equal(w, a6[k]) for k, w in lora(a2, "lora_B").items())
    products = rows("rehearsal", "mul", 16)
    near = divergence_from_base(world, str(long.adapter_path), products)
    far = divergence_from_base(world, str(plain.adapter_path), products)
    assert near < far / 3, (near, far)


def test_a_continued_adapter_carries_its_update_onto_the_new_directions(
    world: dict[str, Path],
) -> None:
    """Continuing a parent: `lora_A` is re-fixed (and frozen), and `lora_B` becomes the
    parent's update seen through the new directions: `B A = B0 A0 P`, P the projection on
    the new `lora_A`'s rows."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world["base"])
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(world["base"]), world["parent"], is_trainable=True
    )

    def token_ids(chats: list[dict[str, Any]]) -> list[list[int]]:
        return [
            list(tokenizer.apply_chat_template(r["messages"], return_dict=True)["input_ids"])
            for r in chats
        ]

    layers = lora_layers(model)
    before = {
        n: (m.lora_A["default"].weight.clone(), m.lora_B["default"].weight.clone())
        for n, m in layers.items()
    }
    fix_lora_a(
        model, token_ids(rows("add", "add", 8)), token_ids(rows("r", "mul", 8)), continued=True
    )
    for name, layer in layers.items():
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        a0, b0 = before[name]
        assert not a.requires_grad and b.requires_grad
        assert not torch.allclose(a, a0)
        projection = a.T @ torch.linalg.inv(a @ a.T) @ a
        assert torch.allclose(b @ a, b0 @ a0 @ projection, atol=1e-5)


def test_a_continued_stage_trains_lora_b_only(world: dict[str, Path], tmp_path: Path) -> None:
    kw = {"train": "mixed", "max_steps": 2, "parent_adapter": str(world["parent"])}
    short = sft.run(sft_config(world, tmp_path / "c2", protect_tasks=("rehearsal",), **kw))
    kw["max_steps"] = 4
    long = sft.run(sft_config(world, tmp_path / "c4", protect_tasks=("rehearsal",), **kw))
    a2, a4 = adapter_weights(short.adapter_path), adapter_weights(long.adapter_path)
    assert all(torch.equal(w, a4[k]) for k, w in lora(a2, "lora_A").items())
    assert any(not torch.equal(w, a4[k]) for k, w in lora(a2, "lora_B").items())


def test_protected_rows_are_required(world: dict[str, Path], tmp_path: Path) -> None:
    cfg = sft_config(world, tmp_path / "x", train="only_task", protect_tasks=("rehearsal",))
    with pytest.raises(ValueError, match="rows of those tasks"):
        sft.setup(cfg)
