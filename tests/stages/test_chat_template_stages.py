"""A model shaped like what users bring (a byte-level BPE tokenizer with a ChatML template
and no generation blocks, imported from a GGUF file): every stage renders its rows with the
model's own chat template, generation stops at the template's end-of-turn token, and the
judge's rubric prompt goes through the same template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from judges.llm_judge import COMPACT_POINTWISE_TEMPLATE, PointwiseJudge
from stages import dpo, sft
from stages.generate.api import SamplingParams
from stages.generate.chat import render_prompts, stop_token_ids
from stages.generate.hf import TransformersBackend
from stages.model_import import convert
from tests.stages.test_stage_support import dpo_rows, sft_rows, stage_config, write_jsonl
from tests.support.tiny_gguf import write_tiny_gguf

CHATML_PROMPT = "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chatml")
    gguf = write_tiny_gguf(root / "tiny.gguf", hidden=32)
    base = root / "base"
    convert(gguf, base, dtype="float32")
    return {
        "base": base,
        "train": write_jsonl(root / "sft.jsonl", sft_rows(8)),
        "pairs": write_jsonl(root / "dpo.jsonl", dpo_rows(8)),
    }


def decode(trainer: Any, ids: Any) -> str:
    return trainer.processing_class.decode([int(i) for i in ids], skip_special_tokens=False)


def test_sft_renders_chatml_and_learns_only_the_answer_and_its_end(
    world: dict[str, Path], tmp_path: Path
) -> None:
    cfg = stage_config(sft.SFTStageConfig, world, tmp_path, target_modules=("all-linear",))
    session = sft.setup(cfg)
    try:
        assert session.loss_mode == "completion_only"  # ChatML has no generation blocks
        trainer = session.run.trainer
        batch = next(iter(trainer.get_train_dataloader()))
        rows = sft_rows(8)
        by_question = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in rows}
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            text = decode(trainer, ids)  # padded at the end with <|im_end|>
            question = next(q for q in by_question if CHATML_PROMPT.format(q=q) in text)
            answer = by_question[question]
            assert text.startswith(CHATML_PROMPT.format(q=question) + answer + "<|im_end|>")
            learned = decode(
                trainer, [i for i, label in zip(ids, labels, strict=True) if label != -100]
            )
            assert learned.startswith(answer + "<|im_end|>") and "user" not in learned
    finally:
        sft.cleanup(session)


def test_dpo_renders_the_prompt_with_the_generation_prompt_opened(
    world: dict[str, Path], tmp_path: Path
) -> None:
    cfg = stage_config(dpo.DPOStageConfig, world, tmp_path, train="pairs")
    session = dpo.setup(cfg)
    try:
        trainer = session.run.trainer
        row = trainer.train_dataset[0]
        prompt = decode(trainer, row["prompt_ids"])
        question = dpo_rows(8)[0]["prompt"][0]["content"]
        assert prompt.endswith(CHATML_PROMPT.format(q=question))
        chosen = decode(trainer, row["chosen_ids"])
        assert chosen.startswith(dpo_rows(8)[0]["chosen"][0]["content"] + "<|im_end|>")
    finally:
        dpo.cleanup(session)


def test_generation_and_the_judge_use_the_template_and_stop_at_its_end(
    world: dict[str, Path],
) -> None:
    backend = TransformersBackend(world["base"], device="cpu")
    tokenizer = backend.tokenizer
    chat = [{"role": "user", "content": "What is 2+3?"}]
    assert render_prompts(tokenizer, [chat]) == [CHATML_PROMPT.format(q="What is 2+3?")]
    assert stop_token_ids(tokenizer)[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    texts = backend.generate([chat] * 3, SamplingParams(temperature=1.0, n=2, max_new_tokens=40))
    assert not any("<|im_end|>" in t or "<|im_start|>" in t for group in texts for t in group)
    judge = PointwiseJudge(backend, template=COMPACT_POINTWISE_TEMPLATE, max_new_tokens=4)
    [rubric] = judge.render(chat, "5")
    rendered = render_prompts(tokenizer, [[rubric]])[0]
    assert rendered == CHATML_PROMPT.format(
        q=COMPACT_POINTWISE_TEMPLATE.format(prompt="What is 2+3?", response="5")
    )
    backend.close()
