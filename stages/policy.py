"""The policy a stage trains: the base model plus the production adapter, and its reference.

- `resolve_parent`: checks the parent (production) adapter's registry manifest against the
  base and gives its version.
- `lora_config` / `load_policy`: the base with the parent adapter, trainable (continual
  learning), or the bare base and a fresh LoRA config for TRL to apply.
- `trainable_adapter_state` / `check_reference`: that a DPO or GRPO trainer's reference
  policy is the production policy (a frozen copy of the parent, or the bare base).

It does not train, save or publish adapters (`stages.stage_run`), and does not know any
stage's dataset format.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from stages import registry
from stages.stage_io import ConfigError

log = logging.getLogger(__name__)

REF_ADAPTER = "ref"


def resolve_parent(
    parent_adapter: str | None, parent_version: int | None, base_model: str
) -> int | None:
    """The parent version to record. A registry folder (with `manifest.json`) is verified,
    must belong to `base_model`, and gives the version when `parent_version` is None."""
    if parent_adapter is None:
        if parent_version is not None:
            raise ConfigError("parent_version is set but parent_adapter is not")
        return None
    path = Path(parent_adapter)
    if not (path / "adapter_config.json").is_file():
        raise ConfigError(f"parent_adapter {path}: no adapter_config.json (not a PEFT adapter)")
    if not (path / registry.MANIFEST).is_file():
        return parent_version
    manifest = registry.verify(path)
    if parent_version is None:
        parent_version = manifest.version
    elif parent_version != manifest.version:
        raise ConfigError(
            f"parent_version {parent_version} but {path} is version {manifest.version}"
        )
    base = registry.base_identity(base_model)
    if manifest.base.config_sha256 != base.config_sha256:
        raise ConfigError(
            f"parent adapter {path} was trained on another base ({manifest.base.id}) "
            f"than {base_model}"
        )
    return parent_version


def lora_config(r: int, alpha: int, dropout: float, target_modules: Sequence[str]) -> Any:
    """A causal-LM `peft.LoraConfig`; `("all-linear",)` targets every linear layer."""
    from peft import LoraConfig

    targets: str | list[str] = (
        "all-linear" if tuple(target_modules) == ("all-linear",) else list(target_modules)
    )
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM"
    )


def load_policy(
    base_model: str,
    parent_adapter: str | None,
    *,
    lora: Any,
    dtype: torch.dtype,
) -> tuple[Any, Any, PreTrainedTokenizerBase]:
    """(model, peft_config, tokenizer) to hand to a TRL trainer.

    With a parent adapter: the base wrapped in `PeftModel.from_pretrained(...,
    is_trainable=True)` (the adapter named "default", its own LoRA settings) and no
    peft_config; TRL's DPO and GRPO trainers then add a frozen copy named "ref" as the
    reference policy. Without one: the bare base and `lora`, which TRL applies (the
    reference is then the base with the adapter disabled, i.e. the production policy).
    """
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    if parent_adapter is None:
        return model, lora, tokenizer
    from peft import PeftModel

    policy = PeftModel.from_pretrained(model, parent_adapter, is_trainable=True)
    log.info("continuing from adapter %s", parent_adapter)
    return policy, None, tokenizer


def trainable_adapter_state(model: Any) -> dict[str, torch.Tensor]:
    """A copy of the weights of the trained ("default") adapter."""
    from peft import get_peft_model_state_dict

    return {
        k: v.detach().clone()
        for k, v in get_peft_model_state_dict(model, adapter_name="default").items()
    }


def check_reference(trainer: Any, parent: dict[str, torch.Tensor] | None) -> str:
    """Which reference policy a DPO/GRPO trainer will use, checked to be the production one.

    With a parent adapter, TRL 1.16 must have added a "ref" adapter whose weights equal the
    parent's and that does not train: "ref-adapter". Without one, the reference must be the
    base with the adapter disabled (no separate reference model): "base".
    """
    model = trainer.model
    name = type(trainer).__name__
    if parent is None:
        if getattr(trainer, "ref_model", None) is not None:
            raise RuntimeError(f"{name} built a separate reference model; expected the base")
        return "base"
    if REF_ADAPTER not in getattr(model, "peft_config", {}):
        raise RuntimeError(
            f"{name} added no frozen '{REF_ADAPTER}' copy of the parent adapter: the reference "
            "would be the bare base, not the production policy"
        )
    from peft import get_peft_model_state_dict

    ref = get_peft_model_state_dict(model, adapter_name=REF_ADAPTER)
    if set(ref) != set(parent) or any(not torch.equal(ref[k], parent[k]) for k in parent):
        raise RuntimeError(f"the '{REF_ADAPTER}' adapter differs from the parent adapter")
    if any(p.requires_grad for n, p in model.named_parameters() if f".{REF_ADAPTER}." in n):
        raise RuntimeError(f"the '{REF_ADAPTER}' adapter is trainable")
    return "ref-adapter"
