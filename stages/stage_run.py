"""Running a stage from its config: set-up, the shared training arguments, training,
publishing the adapter, and `result.json`.

- `begin`: threads, the output folder and a copy of the config; `training_kwargs` / `quiet`:
  the `TrainingArguments` every stage sets the same way, and no stdout printer.
- `make_monitor` / `find_resume`: the run's `StageMonitor` and the checkpoint to resume from.
- `execute`: `Trainer.train`, then on rank 0 save the adapter and publish it through
  `stages.registry` (`save_adapter`, `publish_adapter`) and write `result.json`; it returns
  the `StageResult`. `cleanup` releases the trainer and the process group.

It does not know any stage's dataset format or trainer class (the stage modules do), does not
load the policy (`stages.policy`), and writes no training loop: TRL's trainers train.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, ProgressCallback

from stages import registry
from stages.atomic import write_atomic
from stages.checkpoints import CHECKPOINTS, latest_checkpoint, restore_adapter_from_checkpoint
from stages.monitor import StageMonitor
from stages.process import rank, set_threads, use_cpu
from stages.stage_io import (
    ConfigError,
    DatasetSummary,
    StageResult,
    config_to_dict,
    write_result,
)

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
LOG_FILE = "logs.jsonl"
CONFIG_COPY = "stage_config.json"  # not config.json: callers may keep theirs there


# -- training arguments -----------------------------------------------------------------------


def training_kwargs(config: Any, *, bf16: bool) -> dict[str, Any]:
    """The `TrainingArguments` every stage sets the same way from its config's shared fields."""
    return {
        "output_dir": str(Path(config.output_dir) / CHECKPOINTS),
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.per_device_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler_type,
        "warmup_steps": config.warmup_steps,
        "seed": config.seed,
        "logging_steps": config.logging_steps,
        # Guards read every logged loss: the Trainer's filter would hide a NaN behind an average.
        "logging_nan_inf_filter": False,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "report_to": [],
        "disable_tqdm": True,
        "use_cpu": use_cpu(),
        "bf16": bf16,
        "gradient_checkpointing": config.gradient_checkpointing,
        "dataloader_num_workers": 0,
        # LoRA uses every trainable parameter each step; the frozen "ref" copy is not in DDP.
        "ddp_find_unused_parameters": False,
    }


def quiet(trainer: Any) -> None:
    """Drop the Trainer's stdout printer and progress bar; `StageMonitor` logs instead."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


# -- publishing --------------------------------------------------------------------------------


def save_adapter(model: Any, folder: Path) -> Path:
    """Save the trained ("default") adapter alone, as safetensors, into a fresh `folder`."""
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(str(folder), selected_adapters=["default"], safe_serialization=True)
    return folder


def publish_adapter(
    source: Path,
    *,
    adapters_dir: str,
    version: int,
    parent: int | None,
    base_model: str,
    stage: str,
    data: dict[str, Any],
) -> Path:
    """Publish `source` as `adapters_dir/v<version>` (atomic). A version already there from
    this very run (same stage and training-file hash, e.g. a crash between publishing and
    writing result.json) is accepted; any other is an error."""
    registry_dir = Path(adapters_dir)
    target = registry.adapter_path(registry_dir, version)
    if target.exists():
        manifest = registry.verify(target)
        if manifest.stage == stage and manifest.data.get("sha256") == data.get("sha256"):
            log.info("%s is already published by this stage", target)
            return target
        raise registry.RegistryError(f"{target} exists already (from another run)")
    registry.publish(
        source,
        registry_dir,
        version=version,
        parent=parent,
        base=registry.base_identity(base_model),
        stage=stage,
        data=data,
    )
    return target


# -- the run -----------------------------------------------------------------------------------


@dataclass
class StageRun:
    """What a stage's setup built, for `execute`: its config (with the shared field names),
    the TRL trainer, the monitor, and what it trains from."""

    stage: str
    config: Any
    trainer: Any
    monitor: StageMonitor
    dataset: DatasetSummary
    parent_version: int | None
    resume_from: Path | None
    started: float


def begin(config: Any, stage: str) -> float:
    """Start a stage: threads, output folder, a copy of the config; returns the start time."""
    started = time.monotonic()
    set_threads(config.threads)
    output_dir = Path(config.output_dir)
    if rank() == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(
            output_dir / CONFIG_COPY,
            json.dumps({"stage": stage, **config_to_dict(config)}, indent=2) + "\n",
        )
    if config.adapters_dir is not None and config.version is None:
        raise ConfigError("adapters_dir is set but version is not")
    if config.max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1, got {config.max_steps}")
    return started


def make_monitor(config: Any, started: float, groups_per_step: int | None = None) -> StageMonitor:
    return StageMonitor(
        started=started,
        max_seconds=config.max_seconds,
        explosion_factor=config.loss_explosion_factor,
        log_path=Path(config.output_dir) / LOG_FILE,
        groups_per_step=groups_per_step,
    )


def find_resume(config: Any) -> Path | None:
    """The checkpoint to resume from (newest complete one), or None."""
    checkpoint = latest_checkpoint(config.output_dir) if config.resume else None
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    return checkpoint


def execute(
    run: StageRun, extra: Callable[[StageMonitor], dict[str, Any]] | None = None
) -> StageResult:
    """Train, then (rank 0) publish the adapter unless a guard failed, and write result.json.

    A NaN/exploding loss or an exception in training gives a failed result and publishes
    nothing; the time budget gives a completed one with `stopped_early`.
    """
    config, trainer, monitor = run.config, run.trainer, run.monitor
    error: str | None = None
    t0, cpu0 = time.monotonic(), time.process_time()
    try:
        if run.resume_from is not None:
            restore_adapter_from_checkpoint(trainer.model, run.resume_from)
        trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
    except Exception as exc:  # a crash in training is a failed stage, not a lost one
        log.exception("training failed")
        error = f"{type(exc).__name__}: {exc}"
    train_seconds = time.monotonic() - t0
    train_cpu_seconds = time.process_time() - cpu0
    failure = monitor.failure or error
    main = trainer.is_world_process_zero()
    adapter_version: int | None = None
    adapter_path: Path | None = None
    if failure is None and main:
        try:
            model = trainer.accelerator.unwrap_model(trainer.model)
            folder = save_adapter(model, Path(config.output_dir) / ADAPTER_DIR)
            if config.adapters_dir is None:
                adapter_path = folder
            else:
                data = {**run.dataset.to_dict(), "steps": trainer.state.global_step}
                adapter_path = publish_adapter(
                    folder,
                    adapters_dir=config.adapters_dir,
                    version=config.version,
                    parent=run.parent_version,
                    base_model=config.base_model,
                    stage=run.stage,
                    data=data,
                )
                adapter_version = config.version
                shutil.rmtree(folder, ignore_errors=True)
        except Exception as exc:
            log.exception("publishing failed")
            failure = f"publishing failed: {type(exc).__name__}: {exc}"
            adapter_path = None
            adapter_version = None
    tokens = monitor.tokens_seen
    result = StageResult(
        stage=run.stage,
        status="failed" if failure else "completed",
        reason=failure,
        stopped_early=monitor.stopped_early if not failure else None,
        adapter_version=adapter_version,
        adapter_path=str(adapter_path) if adapter_path else None,
        parent_version=run.parent_version,
        parent_adapter=config.parent_adapter,
        steps=int(trainer.state.global_step),
        max_steps=config.max_steps,
        loss_curve=tuple(monitor.loss_curve),
        reward_curve=tuple(monitor.reward_curve),
        tokens_seen=tokens,
        seconds=round(time.monotonic() - run.started, 3),
        train_seconds=round(train_seconds, 3),
        train_cpu_seconds=round(train_cpu_seconds, 3),
        tokens_per_second=round(tokens / train_seconds, 1) if train_seconds > 0 else 0.0,
        resumed_from=str(run.resume_from) if run.resume_from else None,
        dataset=run.dataset,
        world_size=int(trainer.args.world_size),
        output_dir=str(Path(config.output_dir).resolve()),
        metrics=dict(monitor.metrics),
        **(extra(monitor) if extra else {}),
    )
    if main:
        write_result(result, config.output_dir)
        if result.ok and not config.keep_checkpoints:
            shutil.rmtree(Path(config.output_dir) / CHECKPOINTS, ignore_errors=True)
        log.info(
            "%s %s: %d steps, %s",
            run.stage,
            result.status,
            result.steps,
            result.reason or result.adapter_path,
        )
    return result


def cleanup(run: StageRun | None) -> None:
    """Release the trainer and, in a multi-process run, the process group."""
    if run is not None:
        run.trainer = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
