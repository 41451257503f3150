"""A model that is not the world: small random-weight Qwen2 models (`Qwen2ForCausalLM`, a
byte-level BPE tokenizer trained in the test, Qwen2's ChatML template; see
`tests/foreign_model_support.py`) through tutord's generation, a whole cycle and vLLM.

The policy is shaped like Qwen2's base models (eos `<|endoftext|>`, while the template ends
turns with `<|im_end|>`; a greedy generation config with `max_new_tokens` 2048; tokenizer
saved with padding side "left"); a second, smaller model shaped like Qwen2-Instruct (its
generation config asks for sampling) is `judge.base`. The models learn nothing: the tests
check the mechanics. Generation renders ChatML, stops at `<|im_end|>` on both backends,
pads on the left whatever the tokenizer says, and stays greedy whatever the generation
config says; a cycle (synthesis judged by the judge model, SFT, lm-eval's gate, promotion)
finishes with its decision recorded; the adapter targets Qwen2's linear layers; the judge's
stored verdicts are the judge model's own on the compact rubric (the full one does not fit
its 512 positions); the gate's answers are the greedy answers, cut at the end of turn; SFT
renders ChatML, pads on the right, learns the answer and `<|im_end|>`, and caps its length at
the model's 512 positions; vLLM gives transformers' greedy text, with and without the
cycle's adapter.

It does not test what the models learn, other architectures, or the vLLM gate backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from transformers import AutoModelForCausalLM

from daemon.config_file import render_tables
from daemon.models import Cycle, EvalRun, GateDecision
from judges.llm_judge import COMPACT_POINTWISE_TEMPLATE, POINTWISE_TEMPLATE, PointwiseJudge
from replay.db import make_engine, session_scope
from replay.models import Judgment, Sample
from stages.generate.api import AdapterRef, Chat, SamplingParams
from stages.generate.chat import encode_prompts, render_prompts
from stages.generate.hf import TransformersBackend
from tests.cli_support import run_tutord
from tests.foreign_model_support import (
    CHAT_PROMPTS,
    ENDOFTEXT,
    IM_END,
    QWEN2_LINEAR,
    ForeignModels,
    foreign_models,
)
from tests.stages.generate.conftest import vllm_missing

__all__ = ["foreign_models"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("foreign-model")]

GREEDY = SamplingParams(max_new_tokens=24)
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
CHATML = SYSTEM + "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
ANSWER_TOKENS = 8


def raw_greedy(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    """`steps` greedy tokens after `prompt`, one forward pass each, never stopping."""
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([prompt + out])).logits
            out.append(int(logits[0, -1].argmax()))
    return out


def chats(questions: list[str] | tuple[str, ...]) -> list[Chat]:
    return [[{"role": "user", "content": q}] for q in questions]


def config(models: ForeignModels) -> dict[str, object]:
    return {
        "model": {"base": str(models.policy), "threads": 1},
        "judge": {"base": str(models.judge), "max_new_tokens": ANSWER_TOKENS},
        "synth": {"prompts": 8, "n": 2, "max_new_tokens": ANSWER_TOKENS},
        "curriculum": {"min_sft_examples": 1},
        "train": {"sft": {"max_steps": 2, "per_device_batch_size": 4}},
        "gate": {"max_items": 10, "tolerance": 1.0},
        "tasks": {
            "successor": {
                "grader": "numeric",
                "prompts": "successor.jsonl",
                "heldout_percent": 25,
                "max_new_tokens": ANSWER_TOKENS,
            }
        },
    }


@pytest.fixture(scope="module")
def home(foreign_models: ForeignModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose `model.base` and `judge.base` are the two folders, with a task declared
    in tutord.toml and rated logs ingested, after one `tutord cycle --stage sft`."""
    h = tmp_path_factory.mktemp("foreign-home") / "home"
    assert run_tutord(h, "init").returncode == 0
    (h / "tutord.toml").write_text(render_tables(config(foreign_models)), encoding="utf-8")
    rows = [{"prompt": f"What comes after {i}?", "reference": str(i + 1)} for i in range(40)]
    (h / "successor.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    logs = [
        {
            "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["reference"]},
            ],
            "reference": r["reference"],
            "task": "successor",
            "feedback": {"rating": 1},
        }
        for r in rows
    ]
    (h.parent / "logs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))
    ingested = run_tutord(h, "ingest", str(h.parent / "logs.jsonl"))
    assert ingested.returncode == 0, ingested.stderr
    cycle = run_tutord(h, "cycle", "--stage", "sft", "--json")
    assert cycle.returncode == 0, cycle.stdout + cycle.stderr[-5000:]
    return h


def test_generation_renders_chatml_stops_at_the_end_of_turn_and_pads_left(
    foreign_models: ForeignModels,
) -> None:
    for folder in (foreign_models.policy, foreign_models.judge):
        backend = TransformersBackend(folder, device="cpu")
        tokenizer = backend.tokenizer
        im_end = tokenizer.convert_tokens_to_ids(IM_END)
        # The end of turn comes first, whatever the tokenizer's eos is.
        assert backend.stop_ids[0] == backend.end_id == im_end
        prompts = chats(CHAT_PROMPTS)
        assert render_prompts(tokenizer, prompts[:1]) == [CHATML.format(q=CHAT_PROMPTS[0])]

        greedy = backend.generate(prompts, GREEDY)
        assert backend.generate(prompts, GREEDY) == greedy  # greedy, whatever the config says
        # Left padding: a batch of prompts of different lengths answers as one at a time.
        assert [backend.generate([chat], GREEDY)[0] for chat in prompts] == greedy
        unstopped = backend.generate(prompts, SamplingParams(max_new_tokens=24, ignore_eos=True))
        stopped = 0
        for [text], [full] in zip(greedy, unstopped, strict=True):
            assert full.startswith(text) and not any(
                marker in text for marker in ("<|im_", ENDOFTEXT)
            )
            stopped += len(text) < len(full)
        assert stopped >= 1, greedy  # some answers end their turn early

        # It stopped at <|im_end|>: the model's own greedy tokens (no stop at all) reach it
        # right where the answer ends.
        model = AutoModelForCausalLM.from_pretrained(folder)
        for ids, [text] in zip(encode_prompts(tokenizer, prompts), greedy, strict=True):
            tokens = raw_greedy(model, ids, GREEDY.max_new_tokens)
            end = tokens.index(im_end) if im_end in tokens else len(tokens)
            assert tokenizer.decode(tokens[:end], skip_special_tokens=True) == text
        backend.close()

    policy = TransformersBackend(foreign_models.policy, device="cpu").tokenizer
    assert policy.eos_token == ENDOFTEXT and policy.padding_side == "left"


def test_a_cycle_on_a_foreign_model_with_a_foreign_judge(
    home: Path, foreign_models: ForeignModels
) -> None:
    engine = make_engine(f"sqlite:///{home / 'tutord.db'}")
    with session_scope(engine) as s:
        cycle = s.execute(select(Cycle)).scalar_one()
        assert (cycle.state, cycle.stage, cycle.outcome) == ("done", "sft", "promoted")
        assert cycle.train_result["steps"] == 2
        gate = s.execute(select(GateDecision)).scalar_one()
        assert list(gate.tasks) == ["tutord_successor"] and gate.reason
        production = s.execute(
            select(EvalRun).where(EvalRun.role == "production", EvalRun.cycle_id == cycle.id)
        ).scalar_one()
        answers = production.results["tasks"]["tutord_successor"]["responses"]
        samples = {x.id: x for x in s.execute(select(Sample)).scalars()}
        verdicts = [
            (samples[j.sample_id], j.scorer, j.raw)
            for j in s.execute(select(Judgment).where(Judgment.scorer.like("judge:%"))).scalars()
        ]
    engine.dispose()

    # LoRA on Qwen2's own linear layers ("all-linear"), not the output layer.
    adapter = json.loads((home / "adapters" / "v1" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(foreign_models.policy)
    assert {m.rsplit(".", 1)[-1] for m in adapter["target_modules"]} == QWEN2_LINEAR
    # SFT's max_length (1024 by default) is capped at the model's 512 positions.
    log = (home / "cycles" / "00001" / "train" / "stage.log").read_text()
    assert "max_length 1024 capped at the model's context, 512 tokens" in log

    # Every candidate was judged by the judge model: its greedy verdict on the compact rubric
    # (the full rubric alone takes more than its 512 positions in its tokens).
    judge_backend = TransformersBackend(foreign_models.judge, device="cpu")
    [rubric] = encode_prompts(
        judge_backend.tokenizer,
        [[{"role": "user", "content": POINTWISE_TEMPLATE.format(prompt="", response="")}]],
    )
    assert len(rubric) > 512
    assert len(verdicts) == len(samples) == 16
    assert {scorer for _, scorer, _ in verdicts} == {f"judge:{foreign_models.judge}"}
    judge = PointwiseJudge(
        judge_backend, template=COMPACT_POINTWISE_TEMPLATE, max_new_tokens=ANSWER_TOKENS
    )
    prompts = [x.prompt for x, _, _ in verdicts]
    completions = [x.completion for x, _, _ in verdicts]
    again = judge.judge(prompts, completions).raw
    assert [[raw] for _, _, raw in verdicts] == again
    judge_backend.close()
    policy = TransformersBackend(foreign_models.policy, device="cpu")
    by_policy = PointwiseJudge(
        policy, template=COMPACT_POINTWISE_TEMPLATE, max_new_tokens=ANSWER_TOKENS
    )
    assert by_policy.judge(prompts, completions).raw != again  # not the policy's verdicts

    # The gate (lm-eval, hf) asked the same ChatML prompts and cut at the end of turn: its
    # answers of the base are the transformers backend's greedy answers.
    suite = home / "evals" / "suites" / "successor" / "tutord_successor.jsonl"
    items = [json.loads(line) for line in suite.read_text().splitlines()]
    assert sorted(answers) == sorted(item["id"] for item in items)
    expected = policy.generate(
        chats([item["prompt"] for item in items]), SamplingParams(max_new_tokens=ANSWER_TOKENS)
    )
    assert [answers[item["id"]] for item in items] == [text for [text] in expected]
    full = policy.generate(
        chats([item["prompt"] for item in items]),
        SamplingParams(max_new_tokens=ANSWER_TOKENS, ignore_eos=True),
    )
    assert expected != full  # some answers ended their turn before max_new_tokens
    policy.close()


def test_sft_renders_chatml_pads_right_and_learns_the_answer_and_its_end(
    foreign_models: ForeignModels, tmp_path: Path
) -> None:
    from stages import sft
    from stages.configs import SFTStageConfig

    answers = {
        "What comes after 7?": "8",
        "What is 12 + 30?": "42",
        "Say hello to the teacher and my friend.": "Hello, teacher! Hello, friend!",
        "Name a colour.": "Blue.",
    }
    train_file = tmp_path / "train.jsonl"
    train_file.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": a},
                    ],
                    "task": "chat",
                }
            )
            + "\n"
            for q, a in answers.items()
        )
    )
    config = SFTStageConfig(
        base_model=str(foreign_models.policy),
        train_file=str(train_file),
        output_dir=str(tmp_path / "sft"),
        max_steps=1,
        per_device_batch_size=4,
    )
    session = sft.setup(config)
    try:
        trainer = session.run.trainer
        assert session.loss_mode == "completion_only"  # ChatML has no generation blocks
        assert trainer.args.max_length == 512
        # What TRL's GRPO would stop at: the end of turn, first.
        im_end = trainer.processing_class.convert_tokens_to_ids(IM_END)
        eos = trainer.model.generation_config.eos_token_id
        assert isinstance(eos, list) and eos[0] == im_end
        batch = next(iter(trainer.get_train_dataloader()))
        tokenizer = trainer.processing_class
        assert len({int(m.sum()) for m in batch["attention_mask"]}) == 4  # padding shows
        for ids, mask, labels in zip(
            batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True
        ):
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any()  # padded on the right
            text = tokenizer.decode(ids[:n].tolist(), skip_special_tokens=False)
            question = next(q for q in answers if text.startswith(CHATML.format(q=q)))
            learned = tokenizer.decode(
                [int(t) for t, label in zip(ids, labels, strict=True) if label != -100],
                skip_special_tokens=False,
            )
            assert learned in (answers[question] + IM_END, answers[question] + IM_END + "\n")
    finally:
        sft.cleanup(session)


@pytest.mark.vllm
def test_vllm_generates_what_transformers_does(home: Path, foreign_models: ForeignModels) -> None:
    missing = vllm_missing()
    if missing is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{missing} (CI must run the vllm tests)")
        pytest.skip(missing)
    from stages.generate.vllm_offline import VLLMBackend

    prompts = chats(CHAT_PROMPTS)
    adapter = AdapterRef("v1", home / "adapters" / "v1")
    hf = TransformersBackend(foreign_models.policy, device="cpu")
    expected = hf.generate(prompts, GREEDY)
    expected_adapted = hf.generate(prompts, GREEDY, adapter)
    unstopped = hf.generate(prompts, SamplingParams(max_new_tokens=24, ignore_eos=True))
    hf.close()
    assert expected != unstopped  # some greedy answers end their turn early
    backend = VLLMBackend(foreign_models.policy, max_lora_rank=16)
    try:
        assert backend.stop_ids[0] == backend.tokenizer.convert_tokens_to_ids(IM_END)
        got = backend.generate(prompts, GREEDY)
        got_adapted = backend.generate(prompts, GREEDY, adapter)
    finally:
        backend.close()
    assert got == expected
    # Stopped where transformers stopped: at <|im_end|>, which neither the tokenizer's eos
    # nor the generation config names.
    assert got_adapted == expected_adapted != expected
