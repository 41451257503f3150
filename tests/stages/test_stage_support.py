"""Helpers for the training-stage tests (no tests here): the world's tiny random model saved as
a base folder, training files in the three TRL formats, parent adapters, test worlds made of
those, small fast stage configs, and weight digests.

The base is the arith world's tokenizer and a random `build_model` (no bootstrap); a parent
adapter has random non-zero LoRA A and B matrices, so it visibly changes the policy, and is
published into a registry like a production adapter.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file

from stages import registry
from stages.sft import SFTStageConfig
from stages.stage_io import StageResult
from world.model import build_model
from world.tasks import families
from world.tokenizer import build_tokenizer

torch.set_num_threads(1)  # conftest sets OMP_NUM_THREADS=1; the stages use `threads` too

TARGETS = ("q_proj", "v_proj")
RESULT_FIELDS = set(StageResult.__dataclass_fields__)

Config = TypeVar("Config")


def make_base(folder: Path, seed: int = 0) -> Path:
    """The world's tokenizer and a random tiny Llama saved as a model folder."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def problems(n: int = 32, task: str = "add", seed: int = 0) -> list[Any]:
    return families()[task].sample_problems(n, seed=seed)


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sft_rows(n: int = 32) -> list[dict[str, Any]]:
    return [
        {
            "messages": [*p.messages(), {"role": "assistant", "content": p.answer}],
            "task": p.family,
            "origin": "test",
        }
        for p in problems(n)
    ]


def dpo_rows(n: int = 32) -> list[dict[str, Any]]:
    return [
        {
            "prompt": p.messages(),
            "chosen": [{"role": "assistant", "content": p.answer}],
            "rejected": [{"role": "assistant", "content": str(int(p.answer) + 1)}],
            "task": p.family,
        }
        for p in problems(n)
    ]


def rl_rows(n: int = 32) -> list[dict[str, Any]]:
    return [{"prompt": p.messages(), "reference": p.answer, "task": p.family} for p in problems(n)]


def make_parent(base: Path, registry_dir: Path, version: int = 1, seed: int = 1) -> Path:
    """A LoRA adapter with random non-zero weights, published as `registry_dir/v<version>`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGETS), init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(0.5)
    source = registry_dir.parent / f"parent-src-{version}"
    peft_model.save_pretrained(source)
    registry.publish(
        source,
        registry_dir,
        version=version,
        parent=None,
        base=registry.base_identity(base),
        stage="test",
    )
    return registry.adapter_path(registry_dir, version)


def make_world(
    root: Path, *, parent: bool = False, **train_files: Sequence[dict[str, Any]]
) -> dict[str, Path]:
    """A test world in `root`: "base" (`make_base`); with `parent`, "parent", the adapter v1
    `make_parent` publishes into `root/adapters`; and per keyword a JSONL training file
    `root/<keyword>.jsonl` of those rows (`train=sft_rows()` gives "train")."""
    base = make_base(root / "base")
    world = {"base": base}
    if parent:
        world["parent"] = make_parent(base, root / "adapters", version=1)
    for name, rows in train_files.items():
        world[name] = write_jsonl(root / f"{name}.jsonl", rows)
    return world


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def weights_differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert set(a) == set(b), (sorted(a)[:3], sorted(b)[:3])
    return any(not torch.equal(a[k], b[k]) for k in a)


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file in a folder (the base model must not change)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def base_params_unchanged(model: Any, base: Path) -> bool:
    """Whether every base (non-LoRA) parameter of a PeftModel equals the base folder's."""
    saved = load_file(str(base / "model.safetensors"))
    state = model.get_base_model().state_dict()
    checked = 0
    for name, tensor in saved.items():
        key = name
        if key not in state:  # LoRA-wrapped linear layers keep their weight under base_layer
            key = name.replace(".weight", ".base_layer.weight")
        assert key in state, name
        if not torch.equal(state[key].cpu(), tensor):
            return False
        checked += 1
    return checked == len(saved)


def check_result_file(output_dir: Path) -> dict[str, Any]:
    """result.json exists and has every StageResult field; returns it."""
    data = json.loads((output_dir / "result.json").read_text())
    assert set(data) == RESULT_FIELDS, set(data) ^ RESULT_FIELDS
    return data


def check_published(result: StageResult, stage: str, parent: int | None) -> registry.Manifest:
    """The candidate is published, verifies, and its manifest names the stage and parent."""
    assert result.ok, result.reason
    assert result.adapter_path is not None and result.adapter_version is not None
    manifest = registry.verify(Path(result.adapter_path))
    assert manifest.version == result.adapter_version
    assert manifest.stage == stage
    assert manifest.parent == parent
    assert result.dataset is not None
    assert manifest.data["sha256"] == result.dataset.sha256
    assert manifest.data["rows"] == result.dataset.rows
    assert manifest.data["tasks"] == result.dataset.tasks
    assert set(manifest.files) >= {"adapter_config.json", "adapter_model.safetensors"}
    assert not any("/" in name for name in manifest.files), manifest.files  # no "ref/" copy
    return manifest


def train_fresh_lora(stage: Any, config: Any) -> dict[str, torch.Tensor]:
    """Set up, train and clean up `stage` (the module `stages.dpo` or `stages.rl`) from no
    parent adapter: its reference is the base, the base parameters do not change, and the
    candidate is published without a parent. Returns the candidate's weights."""
    session = stage.setup(config)
    assert session.reference == "base"
    result = stage.train(session)
    assert base_params_unchanged(session.run.trainer.model, Path(config.base_model))
    stage.cleanup(session)
    check_published(result, stage.STAGE, parent=None)
    return adapter_weights(Path(result.adapter_path or ""))


def digit_share(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    """A test reward that varies on random text: the share of digits in the completion."""
    texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def alternating(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    """A test reward of 0, 1, 0, 1, ...: every group of completions has some variance."""
    return [float(i % 2) for i in range(len(completions))]


def constant(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    """A test reward of 0.5 everywhere: no group has any variance."""
    return [0.5] * len(completions)


def stage_config(
    config_class: type[Config],
    world: dict[str, Path],
    out: Path,
    *,
    train: str = "train",
    **kw: object,
) -> Config:
    """A small, fast config of `config_class` on a test world's base and its training file
    `world[train]`, writing under `out`; `kw` overrides fields."""
    values: dict[str, object] = {
        "base_model": str(world["base"]),
        "train_file": str(world[train]),
        "output_dir": str(out / "run"),
        "adapters_dir": str(out / "adapters"),
        "version": 1,
        "max_steps": 4,
        "per_device_batch_size": 4,
        "learning_rate": 1e-2,
        "save_steps": 2,
        "lora_r": 4,
        "lora_alpha": 8,
        "target_modules": TARGETS,
    }
    values.update(kw)
    return config_class(**values)


def sft_config(world: dict[str, Path], out: Path, **kw: object) -> SFTStageConfig:
    """A small, fast SFT config on a test world (`base`, `train`); `kw` overrides fields."""
    return stage_config(SFTStageConfig, world, out, **kw)
