"""Running a stage from its config: set-up, the shared training arguments, training,
publishing the adapter, and `result.json`.

- `begin`: the required fields, threads, the output folder and a copy of the config;
  `training_kwargs` / `quiet`: the `TrainingArguments` every stage sets the same way, and no
  stdout printer; `capped_max_length`: a stage's `max_length`, at most the model's context.
- `load_inputs`: what every stage loads the same way (parent version, training rows, policy
  through `stages.policy`); `build_run`: the monitor and the stage's TRL trainer, built alike,
  as a `StageRun` with the checkpoint to resume from (`make_monitor` / `find_resume`).
- `execute`: `Trainer.train`, then on rank 0 save the adapter and publish it through
  `stages.registry` (`save_adapter`, `publish_adapter`) and write `result.json`; it returns
  the `StageResult`. `cleanup` releases the trainer and the process group.
- `run_stage` / `main`: a stage's setup, train and cleanup as one call, and its command line.

It does not know any stage's dataset format, trainer class or trainer arguments beyond the
shared ones (the stage modules do), and writes no training loop: TRL's trainers train.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import PrinterCallback, ProgressCallback

from stages import policy, registry, training_data
from stages.atomic import write_atomic
from stages.checkpoints import CHECKPOINTS, latest_checkpoint, restore_adapter_from_checkpoint
from stages.monitor import StageMonitor
from stages.process import configure_logging, rank, resolve_precision, set_threads, use_cpu
from stages.stage_io import (
    ConfigError,
    DatasetSummary,
    StageResult,
    config_to_dict,
    load_config,
    read_result,
    write_result,
)

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
LOG_FILE = "logs.jsonl"
CONFIG_COPY = "stage_config.json"  # not config.json: callers may keep theirs there
REQUIRED = ("base_model", "train_file", "output_dir")
INTERRUPTED_EXIT = 143
"""Exit status of a stage stopped by SIGTERM after saving a checkpoint (no result.json)."""

Session = TypeVar("Session")


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


def capped_max_length(configured: int, model: Any) -> int:
    """The longest tokenized row to train on: the configured `max_length`, or the model's
    context (`max_position_embeddings`, or `n_positions` in GPT-2-style configs) when that is
    shorter. A row kept longer than the model's context would train positions the model never
    had (rotary models extrapolate silently; learned positions fail with an index error)."""
    config = getattr(model, "config", None)
    context = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", None
    )
    if isinstance(context, int) and 0 < context < configured:
        log.info("max_length %d capped at the model's context, %d tokens", configured, context)
        return context
    return configured


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
    """Start a stage: the required fields, threads, output folder, a copy of the config;
    returns the start time."""
    for name in REQUIRED:
        if not getattr(config, name):
            raise ConfigError(f"{name} is required")
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
    monitor = StageMonitor(
        started=started,
        max_seconds=config.max_seconds,
        explosion_factor=config.loss_explosion_factor,
        log_path=Path(config.output_dir) / LOG_FILE,
        groups_per_step=groups_per_step,
    )
    monitor.catch_sigterm()
    return monitor


def find_resume(config: Any) -> Path | None:
    """The checkpoint to resume from (newest complete one), or None."""
    checkpoint = latest_checkpoint(config.output_dir) if config.resume else None
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    return checkpoint


# -- what every stage sets up the same way -----------------------------------------------------


@dataclass
class StageInputs:
    """What `load_inputs` loaded for a stage's trainer: the policy (`peft_config` is None when
    the parent adapter is continued, else the fresh LoRA TRL applies), its tokenizer, the
    training rows and their summary, and the run's start time and parent version."""

    started: float
    parent_version: int | None
    rows: list[dict[str, Any]]
    dataset: DatasetSummary
    model: Any
    peft_config: Any
    tokenizer: Any
    bf16: bool


def load_inputs(
    config: Any,
    stage: str,
    columns: Sequence[str],
    check_rows: Callable[[list[dict[str, Any]], str], None],
) -> StageInputs:
    """`begin` the stage, resolve its parent adapter's version, read the training file (every
    row with the `columns`, then `check_rows(rows, train_file)`) and load the policy in the
    configured precision and LoRA shape (`stages.policy.load_policy`)."""
    started = begin(config, stage)
    parent_version = policy.resolve_parent(
        config.parent_adapter, config.parent_version, config.base_model
    )
    rows, dataset = training_data.load_rows(config.train_file, columns)
    check_rows(rows, config.train_file)
    dtype, bf16 = resolve_precision(config.precision)
    lora = policy.lora_config(
        config.lora_r, config.lora_alpha, config.lora_dropout, config.target_modules
    )
    model, peft_config, tokenizer = policy.load_policy(
        config.base_model, config.parent_adapter, lora=lora, dtype=dtype
    )
    return StageInputs(
        started=started,
        parent_version=parent_version,
        rows=rows,
        dataset=dataset,
        model=model,
        peft_config=peft_config,
        tokenizer=tokenizer,
        bf16=bf16,
    )


def build_run(
    stage: str,
    config: Any,
    inputs: StageInputs,
    trainer_class: Any,
    args: Any,
    train_dataset: Any,
    *,
    groups_per_step: int | None = None,
    **trainer_kwargs: Any,
) -> StageRun:
    """The stage's `StageMonitor` and TRL trainer (`trainer_class` on the policy, its
    tokenizer, `args` and `train_dataset`, plus `trainer_kwargs` such as reward functions),
    without stdout printer, as a `StageRun` that resumes from `find_resume`'s checkpoint."""
    monitor = make_monitor(config, inputs.started, groups_per_step=groups_per_step)
    trainer = trainer_class(
        model=inputs.model,
        args=args,
        train_dataset=train_dataset,
        processing_class=inputs.tokenizer,
        peft_config=inputs.peft_config,
        callbacks=[monitor],
        **trainer_kwargs,
    )
    quiet(trainer)
    return StageRun(
        stage=stage,
        config=config,
        trainer=trainer,
        monitor=monitor,
        dataset=inputs.dataset,
        parent_version=inputs.parent_version,
        resume_from=find_resume(config),
        started=inputs.started,
    )


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
    if monitor.interrupted and error is None:
        log.warning("stopped by SIGTERM at step %d; checkpoint saved", trainer.state.global_step)
        raise SystemExit(INTERRUPTED_EXIT)
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


# -- the whole stage ---------------------------------------------------------------------------


def run_stage(
    config: Any,
    setup: Callable[[Any], Session],
    train: Callable[[Session], StageResult],
    cleanup: Callable[[Session | None], None],
) -> StageResult:
    """A stage's `setup`, `train` and `cleanup` (always) in one call. A finished run
    (result.json present in the config's `output_dir`) is returned as it is."""
    done = read_result(config.output_dir) if config.output_dir else None
    if done is not None:
        log.info("%s has a result already (%s): nothing to do", config.output_dir, done.status)
        return done
    session = None
    try:
        session = setup(config)
        return train(session)
    finally:
        cleanup(session)


def main(
    config_class: type[Any],
    run: Callable[[Any], StageResult],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
) -> int:
    """A stage's command line, `prog --config FILE`: read the JSON config into `config_class`,
    log to its output folder, `run` it; exit 0 when the stage completed, 1 otherwise."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, type=Path, help="JSON config file")
    args = parser.parse_args(argv)
    config = load_config(config_class, args.config)
    if config.output_dir:
        configure_logging(Path(config.output_dir))
    result = run(config)
    return 0 if result.ok else 1
