"""The configs of the training stages, declared once: `SFTStageConfig`, `DPOStageConfig`,
`RLStageConfig`.

Each is a frozen dataclass whose every field has a default and an attribute docstring
(torchtune style). The defaults are tutord's product defaults: what `tutord.toml`'s
`[train.sft]`, `[train.dpo]` and `[train.rl]` say when they are empty, and what a stage run
by hand (`python -m stages.sft --config FILE`) uses for a key its file leaves out. The daemon
validates those tables against these classes when it loads its settings, writes the commented
`tutord.toml` from them, and hands a stage an instance of its class (`stages.stage_io`
writes and reads it as JSON, validating it with pydantic).

Fields made with `per_run(...)` (the model, the data, the output folder, the version, the
seed, ...) are set by the daemon for each run; `tutord.toml` may not set them. Bounds are
`annotated_types` metadata (`Count`, `Positive`, ...): pydantic checks them when it validates,
and `check_bounds` (called by each config's `__post_init__`) when code builds a config.

Nothing here imports torch, transformers, TRL or pydantic, so the daemon's settings can
import it cheaply; it does not train (see the stage modules).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import annotated_types as at

PER_RUN = "tutord.per_run"
"""`dataclasses.field` metadata key of the fields set per run (value: a hint, or "")."""

Count = Annotated[int, at.Ge(1)]
"""An integer >= 1."""
NonNegativeInt = Annotated[int, at.Ge(0)]
Positive = Annotated[float, at.Gt(0)]
"""A number > 0."""
NonNegative = Annotated[float, at.Ge(0)]
Share = Annotated[float, at.Interval(ge=0, le=1)]
"""A number in [0, 1]."""
Dropout = Annotated[float, at.Interval(ge=0, lt=1)]
Precision = Literal["auto", "float32", "bfloat16", "mixed"]

DEFAULT_TARGETS = ("all-linear",)
"""peft's every linear layer but the output head, whatever an architecture names them (on a
Llama: q/k/v/o and gate/up/down projections); a list of module names narrows it."""


def per_run(default: Any, hint: str = "") -> Any:
    """A field that the daemon sets for each run and `tutord.toml` may not set; `hint` says
    where its value comes from instead (shown in the error)."""
    return field(default=default, metadata={PER_RUN: hint})


def per_run_fields(cls: type) -> dict[str, str]:
    """The per-run fields of the config dataclass `cls`, each with its hint."""
    return {
        f.name: f.metadata[PER_RUN]
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if PER_RUN in f.metadata
    }


@functools.cache
def _bounds(cls: type) -> dict[str, tuple[Any, ...]]:
    """Per field, the annotated_types bounds of its annotation (also inside `X | None`)."""
    out: dict[str, tuple[Any, ...]] = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        options = typing.get_args(hint) if union else (hint,)
        metadata: list[Any] = []
        for option in options:
            if typing.get_origin(option) is Annotated:
                for item in option.__metadata__:
                    metadata.extend(item if isinstance(item, at.GroupedMetadata) else [item])
        if metadata:
            out[name] = tuple(metadata)
    return out


_CHECKS = {
    at.Gt: ("gt", ">", lambda v, b: v > b),
    at.Ge: ("ge", ">=", lambda v, b: v >= b),
    at.Lt: ("lt", "<", lambda v, b: v < b),
    at.Le: ("le", "<=", lambda v, b: v <= b),
}


def check_bounds(config: Any) -> None:
    """Raise ValueError naming the field when a value of `config` is out of its declared
    bounds (None is always allowed where the type allows it)."""
    for name, metadata in _bounds(type(config)).items():
        value = getattr(config, name)
        if value is None or isinstance(value, bool):
            continue
        for item in metadata:
            check = _CHECKS.get(type(item))
            if check is None:
                continue
            attr, symbol, ok = check
            bound = getattr(item, attr)
            if not ok(value, bound):
                raise ValueError(
                    f"{type(config).__name__}.{name} must be {symbol} {bound}, got {value!r}"
                )


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass's fields (the string literal right after a
    field's line), whitespace collapsed; fields without one are left out."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # pragma: no cover - no source (frozen app)
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, following in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


@dataclass(frozen=True)
class SFTStageConfig:
    """Everything an SFT run reads; loaded from a JSON object with these keys (all optional
    except `base_model`, `train_file` and `output_dir`; unknown keys are an error)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    base_model: str = per_run("")
    """Folder (or hub id) of the base model and its tokenizer."""
    parent_adapter: str | None = per_run(None)
    """Folder of the production adapter to continue from, or None for a fresh LoRA."""
    train_file: str = per_run("")
    """JSONL file of `{"messages": [...], "task": ...}` rows."""
    output_dir: str = per_run("")
    """The run's work folder: checkpoints/, logs.jsonl, stage.log, stage_config.json (the
    config as run), launch.log (under the launcher), result.json."""
    adapters_dir: str | None = per_run(None)
    """The adapter registry to publish into; None keeps the adapter in `output_dir/adapter`."""
    version: int | None = per_run(None)
    """The version number to publish the candidate as (required with `adapters_dir`)."""
    parent_version: int | None = per_run(None)
    """The parent's version for the manifest; read from the parent's manifest when None."""
    seed: int = per_run(0, "each cycle's seed")
    """Random seed of the run."""
    threads: Annotated[int, at.Ge(1)] = per_run(1, "train.threads")
    """torch threads per process."""
    lora_r: Count = 16
    """LoRA rank. A parent adapter keeps its shape: a rank, alpha or target modules that
    differ from the parent's are refused, naming the key (`tutord rollback --to base` starts
    fresh)."""
    lora_alpha: Count = 32
    """LoRA alpha (scale alpha / r) of a fresh adapter."""
    lora_dropout: Dropout = 0.0
    """LoRA dropout of a fresh adapter."""
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    """Module names to adapt, or ["all-linear"]."""
    learning_rate: Positive = 3e-3
    """Peak learning rate (AdamW)."""
    lr_scheduler_type: str = "linear"
    """A transformers scheduler name: linear, cosine, constant, constant_with_warmup, ..."""
    warmup_steps: NonNegativeInt = 0
    """Steps of linear warmup."""
    max_steps: Count = 600
    """Optimizer steps in all (a resumed run counts the steps before its checkpoint)."""
    per_device_batch_size: Count = 16
    """Chats per device and micro-batch."""
    gradient_accumulation_steps: Count = 1
    """Micro-batches per optimizer step."""
    max_length: Count = 1024
    """Longest tokenized chat; longer ones are truncated. Capped at the model's context
    (`max_position_embeddings`)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more time)."""
    precision: Precision = "auto"
    """auto (float32 on CPU, bfloat16 on a GPU), float32, bfloat16 or mixed (float32
    weights, bfloat16 matmuls under autocast)."""
    max_seconds: Positive | None = 600.0
    """Wall-clock budget of the stage (from its start); training stops gracefully after the
    step that spends it and the adapter is still published (`stopped_early`)."""
    loss_explosion_factor: Positive | None = 10.0
    """Fail the run when a logged loss exceeds this many times the first; None: off."""
    save_steps: Count = 50
    """Checkpoint every this many steps under `output_dir/checkpoints`."""
    save_total_limit: Count | None = 2
    """Checkpoints kept (older ones are deleted); None keeps all."""
    resume: bool = True
    """Resume from the newest complete checkpoint in `output_dir` when there is one."""
    keep_checkpoints: bool = False
    """Keep `output_dir/checkpoints` after a completed run (they are deleted by default)."""
    logging_steps: Count = 1
    """Log (and guard) the loss every this many steps."""

    length_grouped: bool = False
    """Batch chats of similar length together (transformers' `group_by_length` sampler):
    less padding, so faster on CPUs when lengths vary (long rehearsal answers beside short
    task answers); batches are less mixed."""
    padding_free: bool = False
    """Put each batch's chats end to end in one sequence instead of padding them to the
    longest (TRL's padding-free collator; attention stays within each chat by its
    positions). The same batches and loss with fewer tokens: 11% faster per step on the
    real-model demo's data on an AVX-512 CPU, no faster on an AVX2-only one, where attention
    over the joined sequence cost what the padding saved."""
    share_prefix: bool = False
    """With `padding_free`: compute the tokens every chat of a batch starts with (a chat
    template's default system prompt) once per batch, not once per chat; every chat still
    sees them, through a 4-D attention mask (`stages/sft_prefix.py`). The same loss and
    gradients; sdpa or eager attention only."""
    distill_tasks: tuple[str, ...] = ()
    """Tasks whose rows teach the base model's next-token distributions rather than their
    target text: the loss on their answer tokens is KL(base || policy), the base being the
    model with its adapters off (`stages/sft_distill.py`). For rehearsal rows (the base's
    own answers, task `rehearsal`); other rows keep the cross-entropy."""
    loss_average: Literal["tokens", "rows"] = "tokens"
    """How a batch's per-token losses make its loss: "tokens", their mean (TRL's: a long
    answer weighs as much as many short ones), or "rows", the mean over its chats of each
    chat's mean (a two-token answer weighs as much as a 48-token rehearsal answer)."""

    protect_tasks: tuple[str, ...] = ()
    """Tasks whose rows are general text to leave as the base computes it (the rehearsal
    rows): a fresh adapter's `lora_A` is fixed on the directions where the other rows'
    inputs are largest relative to these rows' and frozen, so only `lora_B` trains
    (`stages/sft_protect.py`); a continued adapter is re-fixed on its own rows' directions,
    its parent's update carried onto them.
    Empty: off."""

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.share_prefix and not self.padding_free:
            raise ValueError("share_prefix needs padding_free (chats end to end in one row)")


@dataclass(frozen=True)
class DPOStageConfig:
    """Everything a DPO run reads; loaded from a JSON object with these keys (all optional
    except `base_model`, `train_file` and `output_dir`; unknown keys are an error)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    base_model: str = per_run("")
    """Folder (or hub id) of the base model and its tokenizer."""
    parent_adapter: str | None = per_run(None)
    """Folder of the production adapter to continue from, or None for a fresh LoRA."""
    train_file: str = per_run("")
    """JSONL file of `{"prompt": [...], "chosen": [...], "rejected": [...], "task": ...}` rows."""
    output_dir: str = per_run("")
    """The run's work folder: checkpoints/, logs.jsonl, stage.log, stage_config.json (the
    config as run), launch.log (under the launcher), result.json."""
    adapters_dir: str | None = per_run(None)
    """The adapter registry to publish into; None keeps the adapter in `output_dir/adapter`."""
    version: int | None = per_run(None)
    """The version number to publish the candidate as (required with `adapters_dir`)."""
    parent_version: int | None = per_run(None)
    """The parent's version for the manifest; read from the parent's manifest when None."""
    seed: int = per_run(0, "each cycle's seed")
    """Random seed of the run."""
    threads: Annotated[int, at.Ge(1)] = per_run(1, "train.threads")
    """torch threads per process."""
    lora_r: Count = 16
    """LoRA rank. A parent adapter keeps its shape: a rank, alpha or target modules that
    differ from the parent's are refused, naming the key (`tutord rollback --to base` starts
    fresh)."""
    lora_alpha: Count = 32
    """LoRA alpha (scale alpha / r) of a fresh adapter."""
    lora_dropout: Dropout = 0.0
    """LoRA dropout of a fresh adapter."""
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    """Module names to adapt, or ["all-linear"]."""
    learning_rate: Positive = 1e-3
    """Peak learning rate (AdamW)."""
    lr_scheduler_type: str = "linear"
    """A transformers scheduler name: linear, cosine, constant, constant_with_warmup, ..."""
    warmup_steps: NonNegativeInt = 0
    """Steps of linear warmup."""
    max_steps: Count = 60
    """Optimizer steps in all (a resumed run counts the steps before its checkpoint)."""
    per_device_batch_size: Count = 16
    """Preference pairs per device and micro-batch."""
    gradient_accumulation_steps: Count = 1
    """Micro-batches per optimizer step."""
    max_length: Count = 1024
    """Longest tokenized prompt + completion; longer ones are truncated. Capped at the
    model's context (`max_position_embeddings`)."""
    beta: NonNegative = 0.1
    """DPO's beta: how far the policy may move from the reference (the production policy)."""
    sft_weight: NonNegative = 1.0
    """Weight of an NLL term on the chosen answers added to the DPO loss (RPO, Pang et al.
    2024; TRL's `loss_type=["sigmoid", "sft"]`): plain DPO (0) can lower the likelihood of
    the chosen answers too, and on a small policy it does."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more time)."""
    precision: Precision = "auto"
    """auto (float32 on CPU, bfloat16 on a GPU), float32, bfloat16 or mixed (float32
    weights, bfloat16 matmuls under autocast)."""
    max_seconds: Positive | None = 600.0
    """Wall-clock budget of the stage (from its start); training stops gracefully after the
    step that spends it and the adapter is still published (`stopped_early`)."""
    loss_explosion_factor: Positive | None = 10.0
    """Fail the run when a logged loss exceeds this many times the first; None: off."""
    save_steps: Count = 50
    """Checkpoint every this many steps under `output_dir/checkpoints`."""
    save_total_limit: Count | None = 2
    """Checkpoints kept (older ones are deleted); None keeps all."""
    resume: bool = True
    """Resume from the newest complete checkpoint in `output_dir` when there is one."""
    keep_checkpoints: bool = False
    """Keep `output_dir/checkpoints` after a completed run (they are deleted by default)."""
    logging_steps: Count = 1
    """Log (and guard) the loss every this many steps."""

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class RLStageConfig:
    """Everything an RL run reads; loaded from a JSON object with these keys (all optional
    except `base_model`, `train_file` and `output_dir`; unknown keys are an error)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    base_model: str = per_run("")
    """Folder (or hub id) of the base model and its tokenizer."""
    parent_adapter: str | None = per_run(None)
    """Folder of the production adapter to continue from, or None for a fresh LoRA."""
    train_file: str = per_run("")
    """JSONL file of `{"prompt": [messages], "reference": ..., "task": ...}` rows; every
    column but `prompt` reaches the reward functions as a keyword argument."""
    output_dir: str = per_run("")
    """The run's work folder: checkpoints/, logs.jsonl, stage.log, stage_config.json (the
    config as run), launch.log (under the launcher), result.json."""
    adapters_dir: str | None = per_run(None)
    """The adapter registry to publish into; None keeps the adapter in `output_dir/adapter`."""
    version: int | None = per_run(None)
    """The version number to publish the candidate as (required with `adapters_dir`)."""
    parent_version: int | None = per_run(None)
    """The parent's version for the manifest; read from the parent's manifest when None."""
    seed: int = per_run(0, "each cycle's seed")
    """Random seed of the run."""
    threads: Annotated[int, at.Ge(1)] = per_run(1, "train.threads")
    """torch threads per process."""
    lora_r: Count = 16
    """LoRA rank. A parent adapter keeps its shape: a rank, alpha or target modules that
    differ from the parent's are refused, naming the key (`tutord rollback --to base` starts
    fresh)."""
    lora_alpha: Count = 32
    """LoRA alpha (scale alpha / r) of a fresh adapter."""
    lora_dropout: Dropout = 0.0
    """LoRA dropout of a fresh adapter."""
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    """Module names to adapt, or ["all-linear"]."""
    learning_rate: Positive = 2e-4
    """Peak learning rate (AdamW)."""
    lr_scheduler_type: str = "linear"
    """A transformers scheduler name: linear, cosine, constant, constant_with_warmup, ..."""
    warmup_steps: NonNegativeInt = 0
    """Steps of linear warmup."""
    max_steps: Count = 80
    """Optimizer steps in all (a resumed run counts the steps before its checkpoint)."""
    per_device_batch_size: Count = 32
    """Completions (not prompts) per device and micro-batch; per_device_batch_size x
    gradient_accumulation_steps x processes must be a multiple of `num_generations`."""
    gradient_accumulation_steps: Count = 1
    """Micro-batches per optimizer step."""
    num_generations: Annotated[int, at.Ge(2)] = 8
    """Completions sampled per prompt (the group whose rewards are compared)."""
    max_completion_length: Count = 16
    """Longest completion in tokens."""
    temperature: Positive = 0.7
    """Sampling temperature of the completions."""
    beta: NonNegative = 0.04
    """KL coefficient against the reference (the production policy); 0 turns the KL term off."""
    reward_functions: tuple[str, ...] = ("judges.graders:by_row_grader",)
    """Reward functions as "module:function" import paths, each with the call shape
    `(prompts, completions, **columns) -> list[float | None]` (None abstains). The default
    grades each row with the grader its task names (the dataset's `grader` column)."""
    reward_weights: tuple[float, ...] | None = None
    """One weight per reward function (TRL sums the weighted rewards); None: all 1."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more time)."""
    precision: Precision = "auto"
    """auto (float32 on CPU, bfloat16 on a GPU), float32, bfloat16 or mixed (float32
    weights, bfloat16 matmuls under autocast)."""
    max_seconds: Positive | None = 600.0
    """Wall-clock budget of the stage (from its start); training stops gracefully after the
    step that spends it and the adapter is still published (`stopped_early`)."""
    loss_explosion_factor: Positive | None = None
    """Fail the run when a logged loss exceeds this many times the first; None (the default
    for RL): off, since GRPO's loss is centred on zero and its scale says little. NaN/inf
    losses always fail the run."""
    save_steps: Count = 50
    """Checkpoint every this many steps under `output_dir/checkpoints`."""
    save_total_limit: Count | None = 2
    """Checkpoints kept (older ones are deleted); None keeps all."""
    resume: bool = True
    """Resume from the newest complete checkpoint in `output_dir` when there is one."""
    keep_checkpoints: bool = False
    """Keep `output_dir/checkpoints` after a completed run (they are deleted by default)."""
    logging_steps: Count = 1
    """Log (and guard) the loss every this many steps."""

    def __post_init__(self) -> None:
        check_bounds(self)


StageConfig = SFTStageConfig | DPOStageConfig | RLStageConfig
STAGE_CONFIGS: dict[str, type[SFTStageConfig] | type[DPOStageConfig] | type[RLStageConfig]] = {
    "sft": SFTStageConfig,
    "dpo": DPOStageConfig,
    "rl": RLStageConfig,
}
"""The config class of each stage, by name."""
