"""A test helper: a LoRA adapter with random non-zero A and B for a saved model.

A fresh LoRA has B = 0 and changes nothing; tests that need an adapter with an effect
(generation, log-probs, evaluation) use this instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_lora_adapter(
    model_dir: Path, out: Path, seed: int, rank: int, targets: list[str] = ALL_PROJECTIONS
) -> Path:
    """Save to `out` a LoRA adapter of rank `rank` for the model in `model_dir`, its A and B
    drawn from N(0, 0.3^2) under `seed`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(out)
    return out
