"""Distilled rows in the SFT stage (`distill_tasks`): their flag reaches the loss, their loss
is KL to the adapter-free model (zero where the policy is the base), and the other rows keep
TRL's cross-entropy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stages import sft
from stages.sft_distill import loss_positions, row_weights, token_losses
from tests.stages.test_stage_support import make_world, sft_config, sft_rows


def rows_with_tasks(tasks: list[str]) -> list[dict[str, object]]:
    return [{**row, "task": task} for row, task in zip(sft_rows(len(tasks)), tasks, strict=True)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    half = ["add", "rehearsal"] * 8
    return make_world(
        tmp_path_factory.mktemp("distill-world"),
        mixed=rows_with_tasks(half),
        rehearsal=rows_with_tasks(["rehearsal"] * 16),
        uneven=uneven_rows(),
    )


def uneven_rows() -> list[dict[str, object]]:
    """Half task rows, half rehearsal rows whose answers are 1 to 4 times as long."""
    rows = rows_with_tasks(["add", "rehearsal"] * 8)
    for i, row in enumerate(rows):
        answer = row["messages"][-1]["content"]  # type: ignore[index]
        row["messages"][-1]["content"] = " ".join([answer] * (1 + i % 4))  # type: ignore[index]
    return rows


def test_token_losses_are_cross_entropy_and_kl_per_flagged_token() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 7)
    base = torch.randn(2, 6, 7)
    labels = torch.tensor(
        [
            [-100, -100, -100, 2, 3, -100],
            [-100, -100, 5, 6, -100, -100],
            [-100, -100, -100, -100, 6, 0],
        ]
    )
    keep = loss_positions(labels)
    assert keep.tolist() == [1, 2, 3, 4]  # no row's next label counts at 0
    distill = torch.tensor([False, True, True])[:, None].expand(3, 6)
    losses, mask = token_losses(logits[:, keep], base[:, keep], labels, distill, keep)
    assert mask.tolist() == (labels[:, 1:][:, keep] != -100).tolist()
    ce = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="none")
    assert torch.allclose(losses[0], ce[keep])
    p, q = base[0, :-1].log_softmax(-1), logits[1, :-1].log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1) * (labels[1, 1:] != -100)
    assert torch.allclose(losses[1], kl[keep])
    # The same logits as the base's: no divergence at all.
    same, _ = token_losses(logits[1:, keep], logits[1:, keep], labels[1:], distill[1:], keep)
    assert same.abs().max() < 1e-5
    # Padding-free: one row of chats end to end, the base's logits only at flagged tokens.
    packed, row = logits[:1], labels[:1]
    flags = torch.tensor([[False, False, False, True, True, True]])
    keep = loss_positions(row)
    assert keep.tolist() == [2, 3]
    losses, _ = token_losses(packed[:, keep], packed[0, 3:4], row, flags, keep)
    ce = F.cross_entropy(packed[0, 2:3], row[0, 3:4])
    assert torch.allclose(losses[0, 0], ce)
    assert losses[0, 1].abs() < 1e-5


def test_the_flag_reaches_the_batch(world: dict[str, Path], tmp_path: Path) -> None:
    cfg = sft_config(world, tmp_path, train="mixed", distill_tasks=("rehearsal",))
    session = sft.setup(cfg)
    try:
        trainer = session.run.trainer
        batches = list(trainer.get_train_dataloader())
        flags = [batch["distill"] for batch in batches]
        shapes = [b["input_ids"].shape for b in batches]
        assert all(
            f.dtype == torch.bool and f.shape == shape
            for f, shape in zip(flags, shapes, strict=True)
        )
        assert all((f == f[:, :1]).all() for f in flags)  # a row's tokens share its flag
        assert len(flags) == 4 and int(sum(f[:, 0].sum() for f in flags)) == 8  # half rehearsal
    finally:
        sft.cleanup(session)


def divergence_from_base(world: dict[str, Path], adapter: str, rows: list[dict]) -> float:
    """Mean KL(base || base + adapter) over every token of the rows' chats."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world["base"])
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(world["base"]), adapter)
    with torch.no_grad():
        policy = model(**batch).logits.log_softmax(-1)
        with model.disable_adapter():
            base = model(**batch).logits.log_softmax(-1)
    kl = (base.exp() * (base - policy)).sum(-1)
    return float(kl[batch["attention_mask"].bool()].mean())


def test_distilled_rows_hold_the_policy_near_the_base(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """A fresh LoRA starts as the base, so distilled rows (KL to the base) barely move it,
    while the same rows by cross-entropy (the arith answers, which the base does not know)
    pull it away: measured as the divergence from the base on those chats."""
    rows = rows_with_tasks(["rehearsal"] * 16)
    cfg = sft_config(world, tmp_path / "kl", train="rehearsal", distill_tasks=("rehearsal",))
    distilled = sft.run(cfg)
    assert distilled.status == "completed" and distilled.steps == 4
    assert distilled.loss_curve[0][1] < 1e-6  # the policy is the base at the first step
    plain = sft.run(sft_config(world, tmp_path / "ce", train="rehearsal"))
    assert plain.status == "completed" and plain.loss_curve[0][1] > 1.0
    near = divergence_from_base(world, str(distilled.adapter_path), rows)
    far = divergence_from_base(world, str(plain.adapter_path), rows)
    assert near < far / 10, (near, far)


def off_the_base(model: torch.nn.Module) -> None:
    """Move the policy off the base (random LoRA B matrices), so that the KL is not zero, and
    put it in eval mode."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.05 * torch.randn_like(param))
    model.eval()


def every_position_loss(trainer: object, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The distilled batch's loss from the logits at every position (the reference for
    `logits_to_keep`)."""
    model, labels, flags = trainer.model, batch["labels"], batch["distill"]
    forward = {k: v for k, v in batch.items() if k not in ("labels", "distill")}
    every = torch.arange(labels.shape[1] - 1)
    with torch.no_grad():
        logits = model(**forward).logits[:, :-1]
        with model.disable_adapter():
            rows = flags.any(-1)
            base = model(**{k: v[rows] for k, v in forward.items()}).logits[:, :-1]
    losses, mask = token_losses(logits, base, labels, flags, every)
    return losses.sum() / mask.sum()


def test_padding_free_batches_give_the_padded_loss(world: dict[str, Path], tmp_path: Path) -> None:
    """The same chats end to end (padding-free) or padded: the same flags per token and the
    same loss, cross-entropy and KL alike."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from stages.sft_distill import with_flags

    cfg = sft_config(
        world, tmp_path, train="mixed", distill_tasks=("rehearsal",), padding_free=True
    )
    session = sft.setup(cfg)
    try:
        trainer = session.run.trainer
        examples = [trainer.train_dataset[i] for i in range(4)]
        packed = trainer.data_collator(examples)
        lengths = [len(e["input_ids"]) for e in examples]
        assert packed["input_ids"].shape == (1, sum(lengths))
        expected = [bool(e["distill"]) for e in examples for _ in range(e["input_ids"].__len__())]
        assert packed["distill"][0].tolist() == expected and any(expected) and not all(expected)
        pad_id = trainer.processing_class.pad_token_id
        padded = with_flags(DataCollatorForLanguageModeling(pad_token_id=pad_id))(examples)
        off_the_base(trainer.model)
        with torch.no_grad():
            loss_packed = trainer.compute_loss(trainer.model, dict(packed))
            loss_padded = trainer.compute_loss(trainer.model, dict(padded))
        assert float(loss_padded) > 0
        assert torch.allclose(loss_packed, loss_padded, rtol=1e-4, atol=1e-5)
        # Logits at every position, not only where a loss is taken: the same loss.
        assert torch.allclose(every_position_loss(trainer, padded), loss_padded, rtol=1e-4)
    finally:
        sft.cleanup(session)


def test_row_weights_count_every_chat_once() -> None:
    """Two chats padded (3 targets and 1) or end to end: each chat's targets share 1/2."""
    labels = torch.tensor([[-100, 5, 6, 7], [-100, -100, 8, -100]])
    padded = row_weights(labels, None)
    assert torch.allclose(padded, torch.tensor([[1 / 6, 1 / 6, 1 / 6], [0.0, 0.5, 0.0]]))
    packed = torch.tensor([[-100, 5, 6, 7, -100, -100, 8]])
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    weights = row_weights(packed, positions)
    assert torch.allclose(weights, torch.tensor([[1 / 6, 1 / 6, 1 / 6, 0.0, 0.0, 0.5]]))


@pytest.mark.parametrize("padding_free", [False, True])
def test_loss_average_rows_is_the_mean_of_each_chats_mean(
    world: dict[str, Path], tmp_path: Path, padding_free: bool
) -> None:
    """`loss_average = "rows"`: the batch's loss is the mean over its chats of each chat's mean
    token loss (cross-entropy or KL), computed here from the logits at every position."""
    cfg = sft_config(
        world,
        tmp_path,
        train="uneven",
        distill_tasks=("rehearsal",),
        padding_free=padding_free,
        loss_average="rows",
    )
    session = sft.setup(cfg)
    try:
        trainer = session.run.trainer
        examples = [trainer.train_dataset[i] for i in range(4)]
        batch = trainer.data_collator(examples)
        off_the_base(trainer.model)
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, dict(batch))
            means = []
            for example in examples:
                one = trainer.data_collator([example])
                forward = {k: v for k, v in one.items() if k not in ("labels", "distill")}
                logits = trainer.model(**forward).logits[:, :-1]
                with trainer.model.disable_adapter():
                    base = trainer.model(**forward).logits[:, :-1]
                every = torch.arange(one["labels"].shape[1] - 1)
                flags = one["distill"]
                base = base[flags[:, :-1]]
                losses, mask = token_losses(logits, base, one["labels"], flags, every)
                means.append(losses.sum() / mask.sum())
        assert torch.allclose(loss, torch.stack(means).mean(), rtol=1e-4, atol=1e-6)
        tokens = trainer.loss_average
        trainer.loss_average = "tokens"
        with torch.no_grad():
            by_tokens = trainer.compute_loss(trainer.model, dict(batch))
        trainer.loss_average = tokens
        assert not torch.allclose(loss, by_tokens, rtol=1e-3)  # the two averages differ here
    finally:
        sft.cleanup(session)
