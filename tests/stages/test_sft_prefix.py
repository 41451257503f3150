"""Shared-prefix batches (`share_prefix`): the chats' common opening is kept once, every chat
still sees it, and the loss and its gradients are those of the same chats unshared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stages import sft
from stages.configs import SFTStageConfig
from stages.sft_prefix import MASK, PREFIX, chat_bounds, share_prefix
from tests.stages.test_sft_distill import off_the_base, rows_with_tasks
from tests.stages.test_stage_support import adapter_weights, make_world, sft_config

SYSTEM = {"role": "system", "content": "You are a careful calculator."}


def rows_with_system(tasks: list[str]) -> list[dict[str, object]]:
    """`rows_with_tasks`, each chat opening with the same system turn."""
    return [
        {**row, "messages": [SYSTEM, *row["messages"]]}  # type: ignore[list-item]
        for row in rows_with_tasks(tasks)
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_world(
        tmp_path_factory.mktemp("prefix-world"),
        system=rows_with_system(["add", "rehearsal"] * 8),
    )


def packed(chats: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """A padding-free batch of (tokens, labels) chats, as TRL's collator lays it out."""
    return {
        "input_ids": torch.tensor([[t for tokens, _ in chats for t in tokens]]),
        "labels": torch.tensor([[x for _, labels in chats for x in labels]]),
        "position_ids": torch.tensor([[p for tokens, _ in chats for p in range(len(tokens))]]),
        "cu_seq_lens_q": torch.tensor([0]),
    }


def test_the_common_prefix_is_kept_once_and_seen_by_every_chat() -> None:
    n = -100
    batch = packed(
        [
            ([1, 2, 3, 4, 5, 6], [n, n, n, n, 5, 6]),
            ([1, 2, 3, 7, 8], [n, n, n, n, 8]),
            ([1, 2, 3, 4, 9, 9, 9], [n, n, n, n, n, 9, 9]),
        ]
    )
    batch["distill"] = torch.tensor([[False] * 6 + [True] * 5 + [False] * 7])
    shared = share_prefix(batch)
    assert int(shared[PREFIX]) == 3  # 1 2 3; the 4 is not in the second chat
    assert shared["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 4, 9, 9, 9]]
    assert shared["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 3, 4, 3, 4, 5, 6]]
    assert shared["labels"].tolist() == [[n, n, n, n, 5, 6, n, 8, n, n, 9, 9]]
    assert shared["distill"].tolist() == [[False] * 6 + [True] * 2 + [False] * 4]
    assert "cu_seq_lens_q" not in shared  # the varlen boundaries no longer hold
    mask = shared[MASK][0, 0]
    assert mask.shape == (12, 12) and mask.dtype == torch.bool
    assert mask[7].nonzero().flatten().tolist() == [0, 1, 2, 6, 7]  # prefix + its own chat
    assert mask[5].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]  # the first chat, whole
    assert mask[11].nonzero().flatten().tolist() == [0, 1, 2, 8, 9, 10, 11]
    assert [end - start for start, end in chat_bounds(shared["position_ids"])] == [6, 2, 4]


def test_the_prefix_stops_before_a_chats_first_target() -> None:
    """A chat whose first target is its fourth token: the third predicts it, so at most two
    tokens are shared; with one shared token nothing changes."""
    n = -100
    chats = [([1, 2, 3, 4, 5], [n, n, n, 4, 5]), ([1, 2, 3, 4, 6], [n, n, n, n, 6])]
    assert int(share_prefix(packed(chats))[PREFIX]) == 2
    early = [([1, 2, 3], [n, n, 3]), ([1, 2, 4], [n, n, 4])]
    assert share_prefix(packed(early)).keys() == packed(early).keys()
    assert MASK not in share_prefix(packed(chats[:1]))  # one chat: nothing to share


def test_share_prefix_needs_padding_free(world: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="padding_free"):
        sft_config(world, tmp_path, train="system", share_prefix=True)
    assert SFTStageConfig.__dataclass_fields__["share_prefix"].default is False


@pytest.mark.parametrize(
    ("distill_tasks", "loss_average"),
    [((), "tokens"), (("rehearsal",), "tokens"), (("rehearsal",), "rows")],
)
def test_shared_batches_give_the_unshared_loss_and_gradients(
    world: dict[str, Path], tmp_path: Path, distill_tasks: tuple[str, ...], loss_average: str
) -> None:
    """The same chats with and without the shared prefix: the same loss (cross-entropy, KL,
    chats averaged or tokens) and the same gradient on every trained weight."""
    common = {"train": "system", "padding_free": True, "distill_tasks": distill_tasks}
    common["loss_average"] = loss_average
    session = sft.setup(sft_config(world, tmp_path / "shared", share_prefix=True, **common))
    plain = sft.setup(sft_config(world, tmp_path / "plain", **common))
    try:
        trainer = session.run.trainer
        examples = [trainer.train_dataset[i] for i in range(6)]
        shared = trainer.data_collator(examples)
        unshared = plain.run.trainer.data_collator(examples)
        prefix = int(shared[PREFIX])
        assert prefix > 10  # the system turn at least
        assert shared["input_ids"].shape[1] == unshared["input_ids"].shape[1] - 5 * prefix
        off_the_base(trainer.model)
        trainer.model.train()  # the tiny model has no dropout: train mode changes nothing

        def loss_and_grads(batch: dict[str, torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
            trainer.model.zero_grad()
            loss = trainer.compute_loss(trainer.model, dict(batch))
            loss.backward()
            trained = [p for p in trainer.model.parameters() if p.requires_grad]
            return float(loss.detach()), [p.grad.clone() for p in trained]

        loss_shared, grads_shared = loss_and_grads(shared)
        loss_plain, grads_plain = loss_and_grads(unshared)
        assert loss_plain > 0
        assert loss_shared == pytest.approx(loss_plain, rel=1e-4)
        assert any(g.abs().sum() > 0 for g in grads_plain)
        for a, b in zip(grads_shared, grads_plain, strict=True):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)
    finally:
        sft.cleanup(session)
        sft.cleanup(plain)


def test_a_shared_prefix_stage_trains_and_publishes(world: dict[str, Path], tmp_path: Path) -> None:
    cfg = sft_config(
        world,
        tmp_path,
        train="system",
        padding_free=True,
        share_prefix=True,
        distill_tasks=("rehearsal",),
    )
    result = sft.run(cfg)
    assert result.status == "completed" and result.steps == cfg.max_steps
    # A fresh LoRA starts with B = 0: trained, the B matrices are not zero any more.
    weights = adapter_weights(Path(result.adapter_path))  # type: ignore[arg-type]
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b)
