"""`StageMonitor`: a `TrainerCallback` that records a run's curves and guards it.

It records the loss (and reward) curves, the last logged metrics and the tokens seen; it
stops a run on a NaN/inf or exploding loss (a failure: nothing is saved at that step) and
at the wall-clock budget (a success, stopped early), with every rank agreeing. Every log
line is appended to a JSONL file on rank 0.

It does not build the trainer, publish anything or write `result.json`
(`stages.stage_run.execute` reads the monitor and does).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger(__name__)

TIME_BUDGET = "time budget"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class StageMonitor(TrainerCallback):
    """Records curves and guards a run.

    - NaN/inf loss or grad norm, or a loss above `explosion_factor` x the first logged loss
      (when that is positive): training stops, no checkpoint is saved at that step, and
      `failure` says why.
    - `max_seconds` after `started` (a `time.monotonic()` value): training stops after the
      step in progress; `stopped_early` is "time budget". Ranks agree (an all-reduce).
    - SIGTERM (`tutord run` stopping, after `catch_sigterm()`): after the step in
      progress a checkpoint is saved and training stops; `interrupted` is True and the stage
      exits without a result, so the next run resumes from that checkpoint.
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
        self.stop_requested = False
        self.interrupted = False

    def catch_sigterm(self) -> None:
        """From now on SIGTERM asks for a checkpoint and a stop instead of killing (in the
        main thread only, where Python allows signal handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def request(signum: int, frame: Any) -> None:
            log.warning("SIGTERM: checkpointing after this step, then stopping")
            self.stop_requested = True

        signal.signal(signal.SIGTERM, request)

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
        if self.stop_requested and self.failure is None:
            self.interrupted = True
            control.should_save = True
            control.should_training_stop = True
            return
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
