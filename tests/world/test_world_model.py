"""The arith model: size, seeded construction, save/load round trip with the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from world.model import build_model, parameter_count
from world.tokenizer import build_tokenizer


def test_size_and_seed() -> None:
    tok = build_tokenizer()
    model = build_model(tok, seed=0)
    assert model.config.model_type == "llama"
    assert 500_000 <= parameter_count(model) <= 1_500_000
    again = build_model(tok, seed=0)
    other = build_model(tok, seed=1)
    state, same, diff = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert not all(torch.equal(state[k], diff[k]) for k in state)


def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    tok = build_tokenizer()
    model = build_model(tok, seed=3).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    batch = loaded_tok(["What is 3+4?", "12-5=7"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
        got = loaded(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert loaded.generation_config.eos_token_id == tok.eos_token_id


def test_the_tokenizer_knows_the_models_context() -> None:
    from world.model import ModelShape
    from world.shipped import SHIPPED_DIR

    assert build_tokenizer().model_max_length == ModelShape().max_positions
    config = json.loads((SHIPPED_DIR / "config.json").read_text())
    assert config["max_position_embeddings"] == ModelShape().max_positions
