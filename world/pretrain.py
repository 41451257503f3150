"""Pretrain the arith world's base model on CPU (`bootstrap`), within a wall-clock budget, cached.

`bootstrap(out_dir, minutes=..., seed=...)` builds the tokenizer and a fresh Llama, trains
it with `transformers.Trainer` on the plain-text arithmetic corpus (`corpus.CorpusStream`)
until the time budget (or `max_steps`) runs out, and writes a normal Hugging Face model
folder: safetensors weights, config, generation config, tokenizer files, `loss_curve.json`
(`[{"step", "loss", "lr"}, ...]`) and `bootstrap.json` (settings and results). The folder is built
in a temporary sibling and moved into place with `os.replace`, so `out_dir` never holds a
half-written model. If `out_dir` already holds a complete model made with the same settings,
nothing is trained; if the settings are the ones the package's shipped model was made with
(the defaults), that model is copied, checked by its hash (`world.shipped`).

The learning rate warms up, then decays along a cosine: over `max_steps` when given (then
a run is reproducible step for step under a seed), otherwise over the time budget (then
the number of steps, and so the weights, depend on the machine's speed).

The training itself runs in a fresh Python process with the CPU numerics pinned
(`world.pretrain_process`): without that, machines with and without AVX-512 trained
different weights from the same seed.

It does not evaluate the model beyond its training loss (see `probe`) and never touches
the network.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from transformers import (
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    default_data_collator,
)

from stages.atomic import replace_dir
from world import shipped
from world.config import WorldConfig
from world.corpus import CorpusConfig, CorpusStream
from world.model import ModelShape, build_model, parameter_count
from world.pretrain_process import train_in_child
from world.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

MANIFEST = "bootstrap.json"
LOSS_CURVE = "loss_curve.json"
# Bump when the corpus or the training recipe changes what equal settings produce: older
# cached models then stop matching. 2: trained in a child process with pinned numerics.
MANIFEST_FORMAT = 2
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", LOSS_CURVE, MANIFEST)
DEFAULT_STEPS = 2000
"""Enough for the model to complete every operand pair's equation ("3+4=") right: about
6 minutes on one thread, so the result ships in the package (`world.shipped`)."""
DEFAULT_MINUTES = 30.0
"""A cap on the default run's wall clock, far above what `DEFAULT_STEPS` take."""


@dataclass(frozen=True)
class BootstrapSettings:
    """Everything that decides what `bootstrap` trains; equal settings mean a cache hit."""

    minutes: float = DEFAULT_MINUTES
    seed: int = 0
    max_steps: int | None = DEFAULT_STEPS
    batch_size: int = 11
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    world: WorldConfig = field(default_factory=WorldConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    shape: ModelShape = field(default_factory=ModelShape)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["world"] = self.world.to_dict()
        out["corpus"] = self.corpus.to_dict()
        out["shape"] = self.shape.to_dict()
        return out


@dataclass(frozen=True)
class BootstrapResult:
    """What a bootstrap run did."""

    steps: int
    seconds: float
    steps_per_second: float
    final_loss: float | None
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Budget(TrainerCallback):
    """Stops training at the wall-clock budget and sets the learning rate each step:
    linear warmup, then cosine decay to `min_lr_ratio` over steps or over time."""

    def __init__(self, settings: BootstrapSettings) -> None:
        self.settings = settings
        self.budget_s = settings.minutes * 60.0
        self.started = 0.0
        self.lrs: dict[int, float] = {}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.started = time.monotonic()

    def _factor(self, step: int) -> float:
        s = self.settings
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        if s.max_steps:
            progress = step / s.max_steps
        else:
            progress = (time.monotonic() - self.started) / max(self.budget_s, 1e-9)
        progress = min(max(progress, 0.0), 1.0)
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        optimizer = kw.get("optimizer")
        if optimizer is None:
            raise RuntimeError("the Trainer passed no optimizer to the callback")
        lr = self.settings.learning_rate * self._factor(state.global_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.lrs[state.global_step + 1] = lr  # the step number the Trainer will log

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kw: Any,
    ) -> None:
        if time.monotonic() - self.started >= self.budget_s:
            control.should_training_stop = True


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of a complete bootstrap folder, or None if it is missing or incomplete."""
    out_dir = Path(out_dir)
    if not all((out_dir / name).is_file() for name in _REQUIRED_FILES):
        return None
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def resolve_settings(
    minutes: float, seed: int, max_steps: int | None, settings: BootstrapSettings | None
) -> BootstrapSettings:
    """`settings` (or the defaults) with `minutes`, `seed` and `max_steps` put in."""
    if minutes <= 0:
        raise ValueError("minutes must be positive")
    if max_steps is not None and max_steps < 1:
        raise ValueError("max_steps must be at least 1")
    return replace(
        settings or BootstrapSettings(), minutes=float(minutes), seed=seed, max_steps=max_steps
    )


def is_cached(out_dir: Path, settings: BootstrapSettings) -> bool:
    """True when `out_dir` holds a complete model bootstrapped with exactly `settings`."""
    manifest = read_manifest(Path(out_dir))
    return (
        manifest is not None
        and manifest.get("format") == MANIFEST_FORMAT
        and manifest.get("settings") == settings.to_dict()
    )


Source = Literal["cached", "shipped", "trained"]


def source(out_dir: Path, settings: BootstrapSettings, force: bool = False) -> Source:
    """Where `bootstrap(out_dir, ..., force=force)` takes its model from for `settings`:
    the model already in `out_dir`, the package's shipped one, or training."""
    if force:
        return "trained"
    if is_cached(Path(out_dir), settings):
        return "cached"
    if shipped.matches(settings.to_dict(), MANIFEST_FORMAT):
        return "shipped"
    return "trained"


def _train(
    settings: BootstrapSettings, target: Path, threads: int | None
) -> tuple[BootstrapResult, dict[str, Any]]:
    """Train into `target` in a fresh process with pinned numerics (`pretrain_process`)."""
    return train_in_child(settings, target, threads)


def train_here(settings: BootstrapSettings, target: Path) -> BootstrapResult:
    """Train `settings` in this process and save the model into `target`. Bit-for-bit
    reproducible only under the environment `pretrain_process` gives it."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, settings.seed, settings.shape)
    data = CorpusStream(tokenizer, settings.seed, settings.corpus, settings.world)
    budget = _Budget(settings)
    with tempfile.TemporaryDirectory(prefix="tutord-bootstrap-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=settings.max_steps or 10**9,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="constant",
            weight_decay=settings.weight_decay,
            adam_beta2=0.98,
            max_grad_norm=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=settings.seed,
            data_seed=settings.seed,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data,
            data_collator=default_data_collator,
            callbacks=[budget],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        started = time.monotonic()
        trainer.train()
        seconds = time.monotonic() - started
    curve = [
        {
            "step": int(entry["step"]),
            "loss": float(entry["loss"]),
            "lr": budget.lrs.get(int(entry["step"])),
        }
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    steps = trainer.state.global_step
    tail = [point["loss"] for point in curve[-10:]]
    result = BootstrapResult(
        steps=steps,
        seconds=round(seconds, 3),
        steps_per_second=round(steps / seconds, 3) if seconds > 0 else 0.0,
        final_loss=round(sum(tail) / len(tail), 5) if tail else None,
        parameters=parameter_count(model),
    )
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / LOSS_CURVE).write_text(json.dumps(curve))
    return result


def bootstrap(
    out_dir: Path,
    *,
    minutes: float = DEFAULT_MINUTES,
    seed: int = 0,
    max_steps: int | None = DEFAULT_STEPS,
    settings: BootstrapSettings | None = None,
    force: bool = False,
    threads: int | None = None,
) -> Path:
    """Pretrain (or find cached) the world's base model in `out_dir`; return `out_dir`.

    `minutes`, `seed` and `max_steps` override the corresponding fields of `settings`
    (`max_steps=None`: train until the time budget runs out). When the settings are the
    ones the package's shipped model was made with, that model is copied (verified by its
    hash) instead of training. With `force`, the model is trained even when a cached or
    shipped one matches; its manifest's `sha256` then tells whether it is the shipped one
    bit for bit. The training runs in a fresh process with pinned CPU numerics
    (`world.pretrain_process`), so equal settings give equal weights on any x86-64 machine
    with AVX2. `threads` sets torch's CPU threads for the run (default: torch's own choice);
    it is recorded in the manifest but is not part of the cache key. On a busy two-core
    machine one thread can be several times faster than two.
    """
    settings = resolve_settings(minutes, seed, max_steps, settings)
    out_dir = Path(out_dir)
    wanted = settings.to_dict()
    how = source(out_dir, settings, force)
    if how == "cached":
        log.info("bootstrap: %s already holds a model with these settings", out_dir)
        return out_dir
    if how == "shipped":
        log.info("bootstrap: copying the shipped model (same settings) to %s", out_dir)
        return shipped.install(out_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{token}"
    tmp.mkdir()
    try:
        log.info("bootstrap: pretraining for up to %.2f min (seed %d)", minutes, seed)
        result, numerics = _train(settings, tmp, threads)
        manifest = {
            "format": MANIFEST_FORMAT,
            "settings": wanted,
            "result": result.to_dict(),
            "torch_threads": numerics["threads"],
            "numerics": numerics,
            "sha256": shipped.weights_sha256(tmp),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "bootstrap: %d steps in %.1f s (%.2f steps/s), final loss %s -> %s",
        result.steps,
        result.seconds,
        result.steps_per_second,
        result.final_loss,
        out_dir,
    )
    return out_dir
