"""Quick accuracy probes of a world model: raw equation completion and chat answers.

`raw_accuracy` asks the model to continue "a+b=" (pretraining's own format) and reads the
number before the newline; `chat_accuracy` renders a one-turn chat with the tokenizer's
template, generates greedily until the end-of-turn token, and scores the reply with the
family's verifier. Both batch with left padding on CPU. They are measurements for the
bootstrap report and tests, not the regression gate (that is lm-eval's job, in `evals/`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from world.tasks import Problem, TaskFamily
from world.verify import final_integer


@torch.no_grad()
def greedy_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    stop_ids: Sequence[int],
    max_new_tokens: int = 16,
    batch_size: int = 128,
) -> list[str]:
    """Greedy continuations of token-id prompts, decoded without special tokens, each cut
    at its first stop token."""
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = [list(p) for p in prompts[start : start + batch_size]]
            width = max(len(p) for p in batch)
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=list(stop_ids),
                pad_token_id=pad,
            )
            for row in generated[:, width:].tolist():
                cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
                out.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out


def raw_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    family: TaskFamily,
    problems: Sequence[Problem],
) -> float:
    """Share of problems whose "a<op>b=" continuation (up to the newline) is the answer."""
    prompts = [tokenizer(f"{p.a}{family.symbol}{p.b}=")["input_ids"] for p in problems]
    newline = tokenizer.convert_tokens_to_ids("\n")
    completions = greedy_completions(
        model, tokenizer, prompts, stop_ids=[newline, tokenizer.eos_token_id], max_new_tokens=6
    )
    hits = [final_integer(c) == int(p.answer) for c, p in zip(completions, problems, strict=True)]
    return sum(hits) / max(len(hits), 1)


def chat_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    max_new_tokens: int = 16,
) -> list[str]:
    """Greedy chat replies to the problems, stopped at the end-of-turn token."""
    prompts = [
        tokenizer.apply_chat_template(p.messages(), add_generation_prompt=True, tokenize=False)
        for p in problems
    ]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
    return greedy_completions(
        model, tokenizer, ids, stop_ids=[tokenizer.eos_token_id], max_new_tokens=max_new_tokens
    )


def chat_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    family: TaskFamily,
    problems: Sequence[Problem],
) -> float:
    """Share of problems the model answers right in chat format (per the family's verifier)."""
    scores = family.score(chat_completions(model, tokenizer, problems), list(problems))
    return sum(s or 0.0 for s in scores) / max(len(scores), 1)
