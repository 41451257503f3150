"""Plain functions the backends share: chat prompts to token ids, stop tokens, completion text.

Every backend renders prompts the same way (the tokenizer's chat template with the
assistant turn opened, then tokenized without adding special tokens again, as vLLM's chat
endpoint does), so they all see identical token ids. Generation stops at the token the
chat template ends an assistant turn with, whatever the tokenizer calls its eos, and at the
eos ids the tokenizer and the generation config name. Nothing here loads a model.
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


_TURN_PROBE = "tutord-end-of-turn-probe"


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template writes right after an assistant message's content
    (`<|im_end|>` in ChatML, `<|eot_id|>` in Llama 3, the world's `<|end|>`), or None when
    the template writes no special token there (or cannot render a user/assistant exchange).

    It need not be the tokenizer's eos: a base model that ships a chat template (Qwen2's
    base models: eos `<|endoftext|>`, turns ended by `<|im_end|>`) says its turns end with a
    token its eos never names, and generation that stops only at the eos runs past the end
    of the answer.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    chat = [
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": _TURN_PROBE},
    ]
    try:
        text = str(tokenizer.apply_chat_template(chat, tokenize=False))
    except Exception:  # a template that refuses this exchange: no answer, not an error
        return None
    at = text.find(_TURN_PROBE)
    if at < 0:
        return None
    after = tokenizer(text[at + len(_TURN_PROBE) :], add_special_tokens=False)["input_ids"]
    if not after:
        return None
    special = set(tokenizer.all_special_ids) | {
        int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special
    }
    return int(after[0]) if int(after[0]) in special else None


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_config: Any = None) -> list[int]:
    """The ids generation stops at: the chat template's end-of-turn token first
    (`end_of_turn_id`), then the tokenizer's eos, then any eos ids of the model's generation
    config (some chat models list several). The first is the end of turn that scoring
    appends after a completion."""
    ids: list[int] = []
    turn_end = end_of_turn_id(tokenizer)
    if turn_end is not None:
        ids.append(turn_end)
    if tokenizer.eos_token_id is not None and int(tokenizer.eos_token_id) not in ids:
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
