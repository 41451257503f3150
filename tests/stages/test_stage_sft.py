"""The SFT stage on the world's tiny random model: a fresh LoRA and a continued one are trained
and published, the base never changes, the loss is on the assistant turn only, the guards
(NaN, explosion, time budget) work, and a killed run resumes from its checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from stages import registry, sft
from stages.checkpoints import latest_checkpoint
from stages.stage_io import ConfigError, load_config, read_result, write_config
from tests.stages.test_stage_support import (
    adapter_weights,
    base_params_unchanged,
    check_published,
    check_result_file,
    folder_digest,
    make_parent,
    sft_config,
)

REPO = Path(__file__).resolve().parents[2]


def config(world: dict[str, Path], out: Path, **kw: object) -> sft.SFTStageConfig:
    return sft_config(world, out, **kw)


def labelled_texts(trainer: Any) -> list[str]:
    """Per row of the trainer's first batch, the text of the tokens that carry a label."""
    batch = next(iter(trainer.get_train_dataloader()))
    texts = []
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        kept = [int(i) for i, label in zip(ids, labels, strict=True) if label != -100]
        texts.append(trainer.processing_class.decode(kept, skip_special_tokens=False))
    return texts


def test_fresh_lora_is_trained_on_assistant_turns_and_published(
    world: dict[str, Path], tmp_path: Path
) -> None:
    before = folder_digest(world["base"])
    cfg = config(world, tmp_path)
    session = sft.setup(cfg)
    assert session.loss_mode == "assistant_only"
    trainer = session.run.trainer
    # Only the assistant's answer and its <|end|> carry labels.
    for text in labelled_texts(trainer):
        assert text.endswith("<|end|>") and text[:-7].lstrip("-").isdigit(), text
    result = sft.train(session)
    model = trainer.model
    assert base_params_unchanged(model, world["base"])
    sft.cleanup(session)

    assert folder_digest(world["base"]) == before
    data = check_result_file(Path(cfg.output_dir))
    assert data["status"] == "completed" and data["stage"] == "sft"
    assert read_result(cfg.output_dir) == result
    check_published(result, "sft", parent=None)
    assert result.steps == 4 and [s for s, _ in result.loss_curve] == [1, 2, 3, 4]
    assert result.tokens_seen > 0 and result.tokens_per_second > 0
    assert result.zero_variance_prompts is None and result.reward_curve == ()
    assert result.resumed_from is None and result.stopped_early is None
    assert result.dataset is not None and result.dataset.tasks == {"add": 32}
    # A fresh LoRA starts with B = 0: trained, the B matrices are not zero any more.
    weights = adapter_weights(Path(result.adapter_path))  # type: ignore[arg-type]
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b)
    assert not (Path(cfg.output_dir) / "checkpoints").exists()  # removed after success
    assert (Path(cfg.output_dir) / "logs.jsonl").is_file()

    # Idempotent: a second run on the same folder returns the result, trains nothing.
    assert sft.run(cfg) == result


def test_mixed_precision_keeps_float32_weights_and_multiplies_in_bfloat16(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """precision "mixed": the policy loads in float32, the Trainer runs its forward passes
    under bf16 autocast (a linear layer's output is bfloat16), and the adapter it publishes
    is trained and float32."""
    cfg = config(world, tmp_path, precision="mixed")
    session = sft.setup(cfg)
    trainer = session.run.trainer
    assert trainer.args.bf16
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    seen: list[torch.dtype] = []
    layer = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    hook = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    result = sft.train(session)
    hook.remove()
    sft.cleanup(session)
    assert seen and set(seen) == {torch.bfloat16}
    weights = adapter_weights(Path(result.adapter_path))  # type: ignore[arg-type]
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(w.dtype == torch.float32 and w.abs().sum() > 0 for w in lora_b)


def test_continues_from_the_production_adapter(world: dict[str, Path], tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    parent = make_parent(world["base"], adapters, version=1)
    before = folder_digest(world["base"])
    cfg = config(world, tmp_path, parent_adapter=str(parent), version=2)
    result = sft.run(cfg)
    manifest = check_published(result, "sft", parent=1)  # the version comes from its manifest
    assert result.parent_version == 1 and result.parent_adapter == str(parent)
    assert manifest.base == registry.verify(parent).base
    trained, start = adapter_weights(Path(result.adapter_path)), adapter_weights(parent)  # type: ignore[arg-type]
    assert set(trained) == set(start)  # the parent's LoRA layout, continued
    assert any(not torch.equal(trained[k], start[k]) for k in start)
    assert registry.verify(parent).files == registry.verify(parent).files  # parent intact
    assert folder_digest(world["base"]) == before


def test_nan_loss_fails_the_stage_and_publishes_nothing(
    world: dict[str, Path], tmp_path: Path
) -> None:
    # A parent adapter with a NaN weight: the very first forward pass gives a NaN loss.
    adapters = tmp_path / "adapters"
    parent = make_parent(world["base"], adapters, version=1)
    poisoned = tmp_path / "poisoned"
    shutil.copytree(parent, poisoned)
    (poisoned / "manifest.json").unlink()
    from safetensors.torch import save_file

    weights = adapter_weights(poisoned)
    key = next(k for k in weights if "lora_B" in k)
    weights[key][0, 0] = float("nan")
    save_file(weights, str(poisoned / "adapter_model.safetensors"))
    cfg = config(world, tmp_path, parent_adapter=str(poisoned), version=2, save_steps=1)
    result = sft.run(cfg)
    assert result.status == "failed"
    assert result.reason is not None and "non-finite loss (nan) at step 1" in result.reason
    assert result.adapter_path is None and result.adapter_version is None
    assert registry.list_versions(adapters) == [1]
    assert check_result_file(Path(cfg.output_dir))["status"] == "failed"
    assert latest_checkpoint(cfg.output_dir) is None  # the poisoned step was not saved


def test_huge_learning_rate_fails_on_non_finite_gradients(
    world: dict[str, Path], tmp_path: Path
) -> None:
    cfg = config(world, tmp_path, learning_rate=1e6, max_steps=6)
    result = sft.run(cfg)
    assert result.status == "failed" and result.steps < 6
    assert result.reason is not None and "non-finite" in result.reason
    assert registry.list_versions(tmp_path / "adapters") == []


def test_loss_explosion_guard(world: dict[str, Path], tmp_path: Path) -> None:
    # A factor below 1 makes any second loss an "explosion": the guard's mechanics.
    cfg = config(world, tmp_path, loss_explosion_factor=0.5)
    result = sft.run(cfg)
    assert result.status == "failed" and result.steps == 2
    assert result.reason is not None and "loss exploded at step 2" in result.reason
    assert registry.list_versions(tmp_path / "adapters") == []


def test_time_budget_stops_early_and_still_publishes(
    world: dict[str, Path], tmp_path: Path
) -> None:
    cfg = config(world, tmp_path, max_steps=50, max_seconds=0.001)
    result = sft.run(cfg)
    assert result.ok and result.stopped_early == "time budget"
    assert result.steps == 1
    check_published(result, "sft", parent=None)


def test_completion_only_loss_without_generation_blocks(
    world: dict[str, Path], tmp_path: Path
) -> None:
    base = tmp_path / "base"
    shutil.copytree(world["base"], base)
    template = base / "chat_template.jinja"
    text = template.read_text()
    assert "{% generation %}" in text
    template.write_text(text.replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    cfg = config(world, tmp_path, base_model=str(base), adapters_dir=None, version=None)
    session = sft.setup(cfg)
    try:
        assert session.loss_mode == "completion_only"
        for text in labelled_texts(session.run.trainer):
            assert text.endswith("<|end|>")
            assert "<|user|>" not in text
        result = sft.train(session)
    finally:
        sft.cleanup(session)
    assert result.ok and result.adapter_version is None
    assert Path(result.adapter_path or "").name == "adapter"  # kept in the run folder


def test_config_file_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"base_model": "b", "max_step": 3}))
    with pytest.raises(ConfigError, match="'max_step'"):
        load_config(sft.SFTStageConfig, path)
    path.write_text(json.dumps({"max_steps": "3"}))
    with pytest.raises(ConfigError, match=r"'max_steps'.*integer"):
        load_config(sft.SFTStageConfig, path)
    path.write_text(json.dumps({"precision": "fp16"}))
    with pytest.raises(ConfigError, match="'precision'"):
        load_config(sft.SFTStageConfig, path)
    path.write_text(json.dumps({"target_modules": ["q_proj"], "max_seconds": 5}))
    loaded = load_config(sft.SFTStageConfig, path)
    assert loaded.target_modules == ("q_proj",) and loaded.max_seconds == 5.0
    cfg = sft.SFTStageConfig(base_model="b", train_file="t", output_dir=str(tmp_path / "o"))
    assert load_config(sft.SFTStageConfig, write_config(cfg, tmp_path / "w.json")) == cfg
    with pytest.raises(ConfigError, match="base_model is required"):
        sft.setup(sft.SFTStageConfig())
    with pytest.raises(ConfigError, match="version"):
        sft.setup(dataclasses.replace(cfg, adapters_dir=str(tmp_path / "a")))


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(world: dict[str, Path], tmp_path: Path) -> None:
    cfg = config(world, tmp_path, max_steps=120, save_steps=5, learning_rate=1e-3)
    config_file = write_config(cfg, tmp_path / "sft.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.sft", "--config", str(config_file)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(cfg.output_dir) is None:
            assert proc.poll() is None, "the stage ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert read_result(cfg.output_dir) is None, "the stage finished before it was killed"
    checkpoint = latest_checkpoint(cfg.output_dir)
    assert checkpoint is not None
    done = int(checkpoint.name.split("-")[1])
    assert 5 <= done < 120

    result = sft.run(cfg)  # started again on the same output folder
    assert result.ok, result.reason
    assert result.resumed_from is not None
    resumed_at = int(Path(result.resumed_from).name.split("-")[1])
    assert resumed_at >= done
    assert result.steps == 120
    assert result.loss_curve[0][0] == resumed_at + 1  # only the steps after the checkpoint
    check_published(result, "sft", parent=None)
