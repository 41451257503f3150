"""Plain functions the backends share: chat prompts to token ids, stop tokens, completion text.

Every backend renders prompts the same way (the tokenizer's chat template with the
assistant turn opened, then tokenized without adding special tokens again, as vLLM's chat
endpoint does), so they all see identical token ids. Nothing here loads a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from stages.generate.api import Chat


def render_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Chat]) -> list[str]:
    """Each chat rendered by the tokenizer's chat template, ending with the assistant's opener."""
    if not prompts:
        return []
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
    return [
        str(tokenizer.apply_chat_template(list(chat), add_generation_prompt=True, tokenize=False))
        for chat in prompts
    ]


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Chat]) -> list[list[int]]:
    """Token ids of each rendered chat (the template writes its own special tokens)."""
    texts = render_prompts(tokenizer, prompts)
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def encode_completions(
    tokenizer: PreTrainedTokenizerBase, completions: Sequence[str], end_id: int
) -> list[list[int]]:
    """Token ids of each completion text, followed by the end-of-turn token `end_id`."""
    if not completions:
        return []
    encoded = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    return [[*ids, end_id] for ids in encoded]


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_config: Any = None) -> list[int]:
    """The ids generation stops at: the tokenizer's eos (end of turn) first, then any eos ids of
    the model's generation config (some chat models list several)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        configured = [configured]
    for token_id in configured or []:
        if int(token_id) not in ids:
            ids.append(int(token_id))
    if not ids:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} and its generation config name no eos token"
        )
    return ids


def decode_completion(
    tokenizer: PreTrainedTokenizerBase, token_ids: Iterable[int], stop_ids: Iterable[int] = ()
) -> str:
    """The text of generated `token_ids`, cut before the first stop id, without special tokens."""
    stops = set(stop_ids)
    kept: list[int] = []
    for token_id in token_ids:
        if int(token_id) in stops:
            break
        kept.append(int(token_id))
    return tokenizer.decode(kept, skip_special_tokens=True)
