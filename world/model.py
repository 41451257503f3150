"""The arith world's model: a small, freshly initialized Llama (`LlamaForCausalLM`).

`build_model(tokenizer, seed)` returns a random-weight model (~0.86M parameters by default:
hidden 128, 4 layers, 4 heads, MLP 384, 256 positions, tied embeddings) sized to the
tokenizer's vocabulary, with its special-token ids and generation settings (greedy, stop at
the end-of-turn token) filled in. It does not train or load weights (see `pretrain`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ModelShape:
    """The architecture's sizes; the defaults favour speed on two CPU cores."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def llama_config(
    tokenizer: PreTrainedTokenizerBase, shape: ModelShape | None = None
) -> LlamaConfig:
    """The `LlamaConfig` for `shape` and the tokenizer's vocabulary and special tokens."""
    shape = shape or ModelShape()
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )


def build_model(
    tokenizer: PreTrainedTokenizerBase, seed: int, shape: ModelShape | None = None
) -> LlamaForCausalLM:
    """A random-weight Llama for the tokenizer, identical for identical seeds and shapes."""
    config = llama_config(tokenizer, shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=16,
    )
    return model


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
