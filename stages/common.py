"""Plain functions the SFT, DPO and RL stages share: the policy, guards, checkpoints, publishing.

- `load_policy`: the base model plus the production adapter, trainable (continual learning), or
  a fresh LoRA config for TRL to apply; `resolve_parent` checks the parent adapter's manifest.
- `StageMonitor`: a `TrainerCallback` that records the loss (and reward) curves and tokens
  seen, stops a run on a NaN/inf or exploding loss (a failure: nothing is published) and at
  the wall-clock budget (a success, stopped early). Decisions agree across ranks.
- `latest_checkpoint` / `restore_adapter_from_checkpoint`: resume after an interruption.
- `execute`: `Trainer.train`, then on rank 0 publish the adapter through `stages.registry`
  and write `result.json`; it returns the `StageResult`.

It does not know any stage's dataset format or trainer class (the stage modules do), and
writes no training loop: TRL's trainers train.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PrinterCallback,
    ProgressCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from stages import registry
from stages.stage_io import (
    ConfigError,
    DatasetSummary,
    StageResult,
    config_to_dict,
    read_jsonl,
    summarize_dataset,
    write_result,
)

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
ADAPTER_DIR = "adapter"
LOG_FILE = "logs.jsonl"
STAGE_LOG = "stage.log"
CONFIG_COPY = "stage_config.json"  # not config.json: callers may keep theirs there
TIME_BUDGET = "time budget"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


# -- process ---------------------------------------------------------------------------------


def set_threads(threads: int) -> None:
    """Use `threads` torch threads (intra-op). More threads than free cores make OpenMP spin."""
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def rank() -> int:
    """This process's global rank under torchrun / accelerate (0 when alone)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def use_cpu() -> bool:
    return not torch.cuda.is_available()


def resolve_precision(precision: str) -> tuple[torch.dtype, bool]:
    """(weights dtype, bf16 mixed precision) for "auto" (float32 on CPU, bfloat16 on a GPU),
    "float32" or "bfloat16"."""
    if precision == "auto":
        precision = "float32" if use_cpu() else "bfloat16"
    if precision == "float32":
        return torch.float32, False
    if precision == "bfloat16":
        return torch.bfloat16, True
    raise ConfigError(f"precision must be auto, float32 or bfloat16, not {precision!r}")


def configure_logging(output_dir: Path) -> None:
    """Log to stderr and, on rank 0, to `output_dir/stage.log` (for `python -m` runs)."""
    fmt = f"%(asctime)s rank{rank()} %(levelname)s %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if rank() == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(output_dir / STAGE_LOG, encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, format=fmt, handlers=handlers, force=True)
    # Progress bars (dataset maps, weight loading) go to stderr and only clutter the logs.
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


# -- data ------------------------------------------------------------------------------------


def load_rows(
    path: str | Path, required: Sequence[str]
) -> tuple[list[dict[str, Any]], DatasetSummary]:
    """The rows of a JSONL training file, each with every column of the file (missing ones
    None), and its summary. A row without one of the `required` columns is an error."""
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path}: no training rows")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for number, row in enumerate(rows, start=1):
        missing = [key for key in required if row.get(key) in (None, "", [])]
        if missing:
            raise ValueError(f"{path}: row {number} has no {', '.join(missing)}")
    full = [{key: row.get(key) for key in columns} for row in rows]
    return full, summarize_dataset(path, rows)


def to_dataset(rows: list[dict[str, Any]]) -> Any:
    """A `datasets.Dataset` in memory (no cache files) from rows with the same columns."""
    from datasets import Dataset

    return Dataset.from_list(rows)


# -- policy ----------------------------------------------------------------------------------


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


REF_ADAPTER = "ref"


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


# -- guards and curves ------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class StageMonitor(TrainerCallback):
    """Records curves and guards a run.

    - NaN/inf loss or grad norm, or a loss above `explosion_factor` x the first logged loss
      (when that is positive): training stops, no checkpoint is saved at that step, and
      `failure` says why.
    - `max_seconds` after `started` (a `time.monotonic()` value): training stops after the
      step in progress; `stopped_early` is "time budget". Ranks agree (an all-reduce).
    - RL: `groups_per_step` (prompts per optimizer step) turns TRL's logged
      `frac_reward_zero_std` into a count of prompts whose completions all scored the same.
    Every log line is appended to `log_path` (JSONL) on rank 0.
    """

    def __init__(
        self,
        *,
        started: float,
        max_seconds: float | None,
        explosion_factor: float | None,
        log_path: Path | None,
        groups_per_step: int | None = None,
    ) -> None:
        self.started = started
        self.max_seconds = max_seconds
        self.explosion_factor = explosion_factor
        self.log_path = log_path
        self.groups_per_step = groups_per_step
        self.loss_curve: list[tuple[int, float]] = []
        self.reward_curve: list[tuple[int, float]] = []
        self.metrics: dict[str, float] = {}
        self.first_loss: float | None = None
        self.failure: str | None = None
        self.stopped_early: str | None = None
        self.tokens_at_begin = 0
        self.last_tokens: float | None = None
        self.zero_variance = 0.0
        self.prompts = 0
        self._last_logged_step: int | None = None

    @property
    def tokens_seen(self) -> int:
        if self.last_tokens is None:
            return 0
        return max(0, int(self.last_tokens) - self.tokens_at_begin)

    def _fail(self, control: TrainerControl, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            log.error("stopping: %s", reason)
        control.should_training_stop = True
        control.should_save = False  # never checkpoint a poisoned model

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.tokens_at_begin = int(state.num_input_tokens_seen or 0)
        self._last_logged_step = state.global_step

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.max_seconds is None:
            return
        over = time.monotonic() - self.started >= self.max_seconds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([1.0 if over else 0.0], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            over = bool(flag.item() > 0)
        if over and state.global_step < state.max_steps:
            if self.stopped_early is None:
                log.info(
                    "time budget of %.0f s spent at step %d", self.max_seconds, state.global_step
                )
            self.stopped_early = TIME_BUDGET
            control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        logs = logs or {}
        step = state.global_step
        if self.log_path is not None and state.is_world_process_zero:
            with self.log_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": step, **logs}, allow_nan=True) + "\n")
        for key, value in logs.items():  # finite numbers only: result.json is strict JSON
            if _finite(value) and not isinstance(value, bool):
                self.metrics[key] = float(value)
        if "num_tokens" in logs and _finite(logs["num_tokens"]):
            self.last_tokens = float(logs["num_tokens"])
        if "reward" in logs and _finite(logs["reward"]):
            self.reward_curve.append((step, float(logs["reward"])))
        if self.groups_per_step is not None and "frac_reward_zero_std" in logs:
            window = step - (self._last_logged_step or 0)
            frac = logs["frac_reward_zero_std"]
            if _finite(frac) and window > 0:
                self.zero_variance += frac * self.groups_per_step * window
                self.prompts += self.groups_per_step * window
        if "loss" in logs:
            self._last_logged_step = step
            loss = logs["loss"]
            if not _finite(loss):
                self._fail(control, f"non-finite loss ({loss}) at step {step}")
                return
            loss = float(loss)
            self.loss_curve.append((step, loss))
            grad_norm = logs.get("grad_norm")
            if grad_norm is not None and not _finite(grad_norm):
                self._fail(control, f"non-finite gradient norm ({grad_norm}) at step {step}")
                return
            if self.first_loss is None:
                self.first_loss = loss
            elif (
                self.explosion_factor is not None
                and self.first_loss > 0
                and loss > self.explosion_factor * self.first_loss
            ):
                self._fail(
                    control,
                    f"loss exploded at step {step}: {loss:.4g} > {self.explosion_factor:g} x "
                    f"the first logged loss {self.first_loss:.4g}",
                )
                return
            log.info(
                "step %d/%d loss %.4f%s",
                step,
                state.max_steps,
                loss,
                f" reward {logs['reward']:.3f}" if _finite(logs.get("reward")) else "",
            )


# -- checkpoints -------------------------------------------------------------------------------


def _complete(checkpoint: Path) -> bool:
    """The Trainer writes `trainer_state.json` last: a checkpoint with a readable one is whole."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (checkpoint / "adapter_model.safetensors").is_file()


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `output_dir/checkpoints`, or None. A checkpoint
    cut short by a kill (no readable `trainer_state.json`) is skipped."""
    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir() and _complete(child):
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def restore_adapter_from_checkpoint(model: Any, checkpoint: Path) -> None:
    """Load the trained ("default") adapter saved in `checkpoint` into `model`.

    When a PeftModel holds several adapters (DPO/GRPO add a frozen "ref" copy of the parent),
    a checkpoint keeps "default" at its top and the others in subfolders, and transformers'
    resume (5.19) then loads only the subfolders: the trained weights would silently restart
    from the parent. The Trainer restores optimizer, scheduler, RNG and step; this restores
    the weights it misses.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if not hasattr(model, "peft_config") or len(model.peft_config) < 2:
        return  # a single adapter: the Trainer loads it itself
    weights = load_file(str(checkpoint / "adapter_model.safetensors"))
    outcome = set_peft_model_state_dict(model, weights, adapter_name="default")
    unexpected = getattr(outcome, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"{checkpoint}: unexpected adapter weights {unexpected[:3]}")
    log.info("restored the trained adapter from %s", checkpoint)


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
        tmp = output_dir / f".{CONFIG_COPY}.tmp"
        tmp.write_text(
            json.dumps({"stage": stage, **config_to_dict(config)}, indent=2) + "\n",
            encoding="utf-8",
        )
        os.replace(tmp, output_dir / CONFIG_COPY)
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
