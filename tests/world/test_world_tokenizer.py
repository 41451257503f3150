"""The arith tokenizer: lossless on the world's text, unknowns to <|unk|>, chat template, files."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from world.corpus import sample_text
from world.tokenizer import BOS, END, PAD, UNK, build_tokenizer


def test_arithmetic_text_round_trips_losslessly() -> None:
    tok = build_tokenizer()
    text = sample_text(200, seed=4) + "\nWhat is 3+4?  The answer is -7.\n(12 * 3) / 4 = 9!"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert len(ids) == len(text) + 1  # one token per character
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.unk_token_id not in ids


def test_unknown_characters_map_to_unk() -> None:
    tok = build_tokenizer()
    ids = tok("3é4", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["3", UNK, "4"]


def test_special_tokens() -> None:
    tok = build_tokenizer()
    assert tok.pad_token == PAD and tok.bos_token == BOS and tok.eos_token == END
    assert tok.pad_token_id == 0
    for marker in ("<|user|>", "<|assistant|>", "<|system|>", END):
        assert len(tok(marker, add_special_tokens=False)["input_ids"]) == 1


def test_chat_template_renders() -> None:
    tok = build_tokenizer()
    messages = [{"role": "user", "content": "What is 3+4?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|bos|><|user|>What is 3+4?<|end|><|assistant|>"
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1
    full = tok.apply_chat_template(
        [*messages, {"role": "assistant", "content": "7"}], tokenize=False
    )
    assert full == "<|bos|><|user|>What is 3+4?<|end|><|assistant|>7<|end|>"
    masked = tok.apply_chat_template(
        [*messages, {"role": "assistant", "content": "7"}],
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    trained = [t for t, m in zip(masked["input_ids"], masked["assistant_masks"], strict=True) if m]
    assert tok.decode(trained) == "7<|end|>"


def test_save_and_load(tmp_path: Path) -> None:
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Compute 12 minus 5.\n12-5=7"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    messages = [{"role": "user", "content": "6 * 7 = ?"}]
    assert loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    )
    assert loaded.eos_token == END and loaded.pad_token == PAD and len(loaded) == len(tok)
