"""The policy a stage trains: the base model plus the production adapter, and its reference.

- `resolve_parent`: checks the parent (production) adapter's registry manifest against the
  base and gives its version.
- `lora_config` / `load_policy`: the base with the parent adapter, trainable (continual
  learning), or the bare base and a fresh LoRA config for TRL to apply.
- `parent_lora_problem`: a parent adapter keeps its LoRA shape (rank, alpha, target modules),
  so a configured shape that differs from the parent's is refused, naming the key, rather
  than silently ignored (`load_policy` raises it; the daemon asks before launching a stage).
  The configured dropout is applied to the continued adapter.
- `trainable_adapter_state` / `check_reference`: that a DPO or GRPO trainer's reference
  policy is the production policy (a frozen copy of the parent, or the bare base).

It does not train, save or publish adapters (`stages.stage_run`), and does not know any
stage's dataset format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages import registry
from stages.stage_io import ConfigError

if TYPE_CHECKING:  # torch and transformers load in the stage's process, not the daemon's
    import torch
    from transformers import PreTrainedTokenizerBase

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
    is_trainable=True)` (the adapter named "default", its own LoRA shape, which must equal
    `lora`'s or `ConfigError` names the differing keys; `lora`'s dropout) and no
    peft_config; TRL's DPO and GRPO trainers then add a frozen copy named "ref" as the
    reference policy. Without one: the bare base and `lora`, which TRL applies (the
    reference is then the base with the adapter disabled, i.e. the production policy).
    A parent adapter holding pickle-based weights, or none in safetensors, is refused
    (`registry.check_weights`) before anything loads. The model's generation config lists
    the chat template's end-of-turn token among its eos ids (`stop_token_ids`).
    """
    if parent_adapter is not None:
        registry.check_weights(Path(parent_adapter))  # safetensors only: never a pickle
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.generate.chat import stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    # What the RL stage generates stops where tutord's backends stop: at the chat template's
    # end of turn too (TRL's GRPO stops at these ids and the tokenizer's eos only; a base
    # model with a chat template, such as Qwen2's, names its end of turn in neither).
    model.generation_config.eos_token_id = stop_token_ids(tokenizer, model.generation_config)
    if parent_adapter is None:
        return model, lora, tokenizer
    from peft import LoraConfig, PeftModel

    targets = lora.target_modules
    wanted = (
        linear_module_names(model)
        if isinstance(targets, str) and targets.lower() == ALL_LINEAR
        else targets
    )
    problem = parent_lora_problem(
        parent_adapter, r=lora.r, alpha=lora.lora_alpha, target_modules=wanted
    )
    if problem is not None:
        raise ConfigError(problem)
    parent_config = LoraConfig.from_pretrained(parent_adapter)
    parent_config.lora_dropout = lora.lora_dropout  # dropout is not part of the shape: honoured
    policy = PeftModel.from_pretrained(
        model, parent_adapter, is_trainable=True, config=parent_config
    )
    log.info("continuing from adapter %s", parent_adapter)
    return policy, None, tokenizer


ALL_LINEAR = "all-linear"
_SHAPE = (("lora_r", "r"), ("lora_alpha", "lora_alpha"), ("target_modules", "target_modules"))


def linear_module_names(model: Any) -> set[str]:
    """Short names of the linear layers "all-linear" targets: every `torch.nn.Linear` but
    the output layer (as peft expands it)."""
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output and name
    }


def _short_names(targets: Any) -> frozenset[str] | None:
    """Target modules as a set of short names; None when they are a pattern (a string)."""
    if isinstance(targets, str) or targets is None:
        return None
    return frozenset(str(t).rsplit(".", 1)[-1] for t in targets)


def lora_shape_mismatches(
    parent: Mapping[str, Any], *, r: int, alpha: int, target_modules: Collection[str]
) -> list[tuple[str, Any, Any]]:
    """(setting, configured value, the parent's value) for each LoRA shape setting that
    differs from the parent adapter's `adapter_config.json` (`parent`). Target modules
    compare as sets of short names; `("all-linear",)`, or a parent whose targets are a
    pattern, is not compared (the stage expands "all-linear" on the model and compares).

    >>> parent = {"r": 16, "lora_alpha": 32, "target_modules": ["v_proj", "q_proj"]}
    >>> lora_shape_mismatches(parent, r=16, alpha=32, target_modules=("q_proj", "v_proj"))
    []
    >>> lora_shape_mismatches(parent, r=8, alpha=32, target_modules=("q_proj",))
    [('lora_r', 8, 16), ('target_modules', ['q_proj'], ['q_proj', 'v_proj'])]
    >>> lora_shape_mismatches(parent, r=16, alpha=32, target_modules=("all-linear",))
    []
    """
    configured: dict[str, Any] = {"lora_r": r, "lora_alpha": alpha}
    theirs: dict[str, Any] = {"lora_r": parent.get("r"), "lora_alpha": parent.get("lora_alpha")}
    mine, their_targets = _short_names(target_modules), _short_names(parent.get("target_modules"))
    if mine is not None and their_targets is not None and mine != frozenset({ALL_LINEAR}):
        configured["target_modules"], theirs["target_modules"] = sorted(mine), sorted(their_targets)
    return [
        (key, configured[key], theirs[key])
        for key, _ in _SHAPE
        if key in configured and theirs[key] is not None and configured[key] != theirs[key]
    ]


def parent_lora_problem(
    parent_adapter: str | Path,
    *,
    r: int,
    alpha: int,
    target_modules: Collection[str],
    prefix: str = "",
) -> str | None:
    """Why a stage configured with this LoRA shape cannot continue `parent_adapter` (which
    keeps its own shape), naming each key with `prefix` (e.g. "train.sft."); None when the
    shapes agree."""
    path = Path(parent_adapter)
    try:
        parent = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"parent_adapter {path}: unreadable adapter_config.json: {exc}") from None
    mismatches = lora_shape_mismatches(parent, r=r, alpha=alpha, target_modules=target_modules)
    if not mismatches:
        return None
    name = str(path)
    try:
        version = json.loads((path / registry.MANIFEST).read_text(encoding="utf-8"))["version"]
        name = f"{registry.version_name(int(version))} ({path})"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    keys = dict(_SHAPE)
    found = "; ".join(
        f"{prefix}{key} = {mine!r} but the parent adapter {name} has {keys[key]}={theirs!r}"
        for key, mine, theirs in mismatches
    )
    keep = ", ".join(f"{prefix}{key} = {theirs!r}" for key, _, theirs in mismatches)
    return (
        f"{found}: a stage continues its parent's LoRA and cannot change its shape. Set "
        f"{keep} to continue it, or start a fresh adapter from the base with your settings "
        "(`tutord rollback --to base`, then the next cycle; by hand: no parent_adapter)"
    )


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
    import torch
    from peft import get_peft_model_state_dict

    ref = get_peft_model_state_dict(model, adapter_name=REF_ADAPTER)
    # The parent's tensors come from its file (CPU); the model may be on a GPU, in its dtype.
    if set(ref) != set(parent) or any(
        not torch.equal(ref[k].cpu(), parent[k].to(ref[k].dtype)) for k in parent
    ):
        raise RuntimeError(f"the '{REF_ADAPTER}' adapter differs from the parent adapter")
    if any(p.requires_grad for n, p in model.named_parameters() if f".{REF_ADAPTER}." in n):
        raise RuntimeError(f"the '{REF_ADAPTER}' adapter is trainable")
    return "ref-adapter"
