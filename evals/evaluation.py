"""What an lm-eval evaluation is: how it runs (`EvalSettings`) and what it found (`Evaluation`,
one `TaskScore` per task), as frozen records with a JSON round trip.

An `Evaluation` holds, per task, lm-eval's aggregate score, its stderr, n, and the per-item
scores and responses keyed by a stable item id (a `TaskScore`: what `evals.cache` stores per
task), plus what identifies it (base model fingerprint, adapter content hash, suite hash,
settings hash).

It does not run lm-eval (`evals.run`), compute cache keys or store runs (`evals.cache`), or
compare runs (`evals.gate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

Backend = Literal["hf", "vllm"]
RUN_FORMAT = 1
_ExtraValue = str | int | float | bool


def _freeze(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class EvalSettings:
    """How lm-eval runs the suite (everything here is part of the cache key).

    apply_chat_template: render each prompt as a one-turn chat with the tokenizer's template
        (the arith tasks need it: the policy answers chats).
    system_instruction: an optional system message before each prompt.
    batch_size: lm-eval's batch size.
    device: hf backend: "cpu", "cuda", ...; None picks cuda when available, else cpu.
    dtype: the model's dtype for lm-eval ("auto": the checkpoint's on a GPU, float32 on a CPU;
        "float32", "bfloat16").
    seed: lm-eval's random, numpy, torch and fewshot seeds (and vLLM's).
    max_lora_rank: vllm backend: the engine's LoRA rank limit (raised to the adapter's rank).
    gpu_memory_utilization: vllm backend; None: 0.1 on a CPU (a share of RAM), 0.9 on a GPU.
    enforce_eager: vllm backend; None: True on a CPU, False on a GPU.
    extra_model_args: anything else for lm-eval's model constructor, as (key, value) pairs.
    """

    apply_chat_template: bool = True
    system_instruction: str | None = None
    batch_size: int = 32
    device: str | None = None
    dtype: str = "auto"
    seed: int = 1234
    max_lora_rank: int = 16
    gpu_memory_utilization: float | None = None
    enforce_eager: bool | None = None
    extra_model_args: tuple[tuple[str, _ExtraValue], ...] = ()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        object.__setattr__(
            self, "extra_model_args", tuple((str(k), v) for k, v in self.extra_model_args)
        )

    def resolved_dtype(self, gpu: bool) -> str:
        """The dtype lm-eval loads the model in: `dtype`, except that "auto" is float32 on a
        CPU. A bfloat16 checkpoint (an imported GGUF's folder) computes several times slower
        there on CPUs without bfloat16 units: a 438-item gate run of SmolLM2 took 390 s on an
        AVX2-only machine against about 100 s in float32."""
        device = self.device or ("cuda" if gpu else "cpu")
        return "float32" if self.dtype == "auto" and device == "cpu" else self.dtype

    def to_dict(self) -> dict[str, Any]:
        return {
            "apply_chat_template": self.apply_chat_template,
            "system_instruction": self.system_instruction,
            "batch_size": self.batch_size,
            "device": self.device,
            "dtype": self.dtype,
            "seed": self.seed,
            "max_lora_rank": self.max_lora_rank,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enforce_eager": self.enforce_eager,
            "extra_model_args": [list(pair) for pair in self.extra_model_args],
        }


@dataclass(frozen=True)
class TaskScore:
    """One task's result: lm-eval's aggregate and the per-item scores behind it.

    score: lm-eval's aggregate of `metric` (the mean for the arith tasks).
    stderr: lm-eval's standard error of it (None when lm-eval gives none).
    n: how many items were scored.
    items: item id -> score (0.0 / 1.0 for the arith tasks), in lm-eval's document order.
    responses: item id -> the model's filtered response text.
    """

    task: str
    metric: str
    filter: str
    score: float
    stderr: float | None
    n: int
    items: Mapping[str, float]
    responses: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", _freeze(self.items))
        object.__setattr__(self, "responses", _freeze(self.responses))

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metric": self.metric,
            "filter": self.filter,
            "score": self.score,
            "stderr": self.stderr,
            "n": self.n,
            "items": dict(self.items),
            "responses": dict(self.responses),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskScore:
        return cls(
            task=str(data["task"]),
            metric=str(data["metric"]),
            filter=str(data["filter"]),
            score=float(data["score"]),
            stderr=None if data.get("stderr") is None else float(data["stderr"]),
            n=int(data["n"]),
            items={str(k): float(v) for k, v in data["items"].items()},
            responses={str(k): str(v) for k, v in data.get("responses", {}).items()},
        )


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of one policy (a base model, optionally with an adapter) on a suite.

    adapter_name / adapter_hash: the adapter's served name and content hash ("base" for none).
    base_fingerprint, settings_hash: with each task's hash, the parts of its cache key.
    suite_hash: the whole suite's hash (`evals.tasks.SuiteSpec.hash`).
    tasks: task name -> `TaskScore`, in the suite's order.
    seconds: how long lm-eval ran for it (0 when every task came from the cache).
    from_cache: True when `evaluate` took every task from an `EvalCache` without running
        lm-eval.
    """

    base_model: str
    adapter_name: str | None
    adapter_hash: str
    base_fingerprint: str
    suite_hash: str
    settings_hash: str
    backend: Backend
    tasks: Mapping[str, TaskScore]
    lm_eval_version: str | None
    created_at: str
    seconds: float | None = None
    from_cache: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", _freeze(self.tasks))

    def score(self, task: str) -> float:
        return self.tasks[task].score

    @property
    def scores(self) -> dict[str, float]:
        """Task name -> aggregate score."""
        return {name: t.score for name, t in self.tasks.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "base_model": self.base_model,
            "adapter_name": self.adapter_name,
            "adapter_hash": self.adapter_hash,
            "base_fingerprint": self.base_fingerprint,
            "suite_hash": self.suite_hash,
            "settings_hash": self.settings_hash,
            "backend": self.backend,
            "tasks": {name: t.to_dict() for name, t in self.tasks.items()},
            "lm_eval_version": self.lm_eval_version,
            "created_at": self.created_at,
            "seconds": self.seconds,
            "from_cache": self.from_cache,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        if data.get("format") != RUN_FORMAT:
            raise ValueError(f"unknown Evaluation format {data.get('format')!r}")
        return cls(
            base_model=str(data["base_model"]),
            adapter_name=data.get("adapter_name"),
            adapter_hash=str(data["adapter_hash"]),
            base_fingerprint=str(data["base_fingerprint"]),
            suite_hash=str(data["suite_hash"]),
            settings_hash=str(data["settings_hash"]),
            backend=data["backend"],
            tasks={name: TaskScore.from_dict(t) for name, t in data["tasks"].items()},
            lm_eval_version=data.get("lm_eval_version"),
            created_at=str(data["created_at"]),
            seconds=data.get("seconds"),
            from_cache=bool(data.get("from_cache", False)),
        )
