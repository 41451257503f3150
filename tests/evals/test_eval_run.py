"""Running suites through lm-eval: model_args, parsing of lm-eval's output, the per-task cache
of results (fast, with lm-eval's entry point replaced by a fake), and the real thing end to
end on the tiny world model with and without a LoRA adapter, and with a task added to a
cached suite (slow)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from evals.cache import CachedTask, EvalCache, adapter_hash
from evals.evaluation import EvalSettings, Evaluation, TaskScore
from evals.gate import GateRules, gate
from evals.run import evaluate, model_args
from evals.tasks import SuiteSpec, write_suite
from stages.generate.api import AdapterRef, SamplingParams
from tests.task_support import arith, successor_task

# -- a fake lm-eval --------------------------------------------------------------------------


class FakeLmEval:
    """Stands in for `lm_eval.simple_evaluate`: scores every document of the suite's JSONL
    files by a rule that depends on the adapter, and records each call's adapter and tasks."""

    def __init__(self, suite: SuiteSpec) -> None:
        self.suite = suite
        self.calls: list[str | None] = []
        self.tasks: list[list[str]] = []

    def make_lm(self, backend: str, args: dict[str, Any]) -> dict[str, Any]:
        return dict(args)

    def simple_evaluate(self, *, model: dict[str, Any], tasks: list[str], **_: Any) -> dict:
        adapter = model.get("peft")
        self.calls.append(adapter)
        self.tasks.append(list(tasks))
        assert self.suite.root is not None
        out: dict[str, Any] = {"results": {}, "samples": {}}
        for task in tasks:
            rows = [
                json.loads(line)
                for line in (self.suite.root / f"{task}.jsonl").read_text().splitlines()
            ]
            salt = 0 if adapter is None else len(Path(adapter).name)
            scores = [float((i + salt) % 3 == 0) for i in range(len(rows))]
            out["results"][task] = {
                "exact_match,none": sum(scores) / len(scores),
                "exact_match_stderr,none": 0.1,
            }
            out["samples"][task] = [
                {
                    "doc_id": i,
                    "doc": row,
                    "filter": "none",
                    "exact_match": s,
                    "filtered_resps": [str(i)],
                    "doc_hash": f"h{i}",
                }
                for i, (row, s) in enumerate(zip(rows, scores, strict=True))
            ]
        return out


@pytest.fixture
def fake_lm_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[SuiteSpec], FakeLmEval]:
    import lm_eval

    import evals.run

    def install(suite: SuiteSpec) -> FakeLmEval:
        fake = FakeLmEval(suite)
        monkeypatch.setattr(lm_eval, "simple_evaluate", fake.simple_evaluate)
        monkeypatch.setattr(evals.run, "_make_lm", fake.make_lm)
        return fake

    return install


def fake_adapter(folder: Path, payload: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 4}', encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(payload)
    return folder


# -- fast ------------------------------------------------------------------------------------


def test_model_args_per_backend(tmp_path: Path) -> None:
    adapter = AdapterRef("v3", fake_adapter(tmp_path / "a,dir", b"x"))
    settings = EvalSettings(batch_size=8, device="cpu", dtype="float32")
    assert model_args("/m", None, "hf", settings) == {
        "pretrained": "/m",
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 8,
    }
    hf = model_args("/m", adapter, "hf", settings)
    assert hf["peft"] == str(adapter.path)  # a dict, so the comma in the path is harmless
    vllm = model_args("/m", adapter, "vllm", EvalSettings(max_lora_rank=2))
    assert vllm["lora_local_path"] == str(adapter.path)
    assert vllm["max_lora_rank"] == 8  # rank 4 rounded up to a size vLLM accepts
    assert "peft" not in vllm and "device" not in vllm
    extra = EvalSettings(extra_model_args=(("max_length", 96),))
    assert model_args("/m", None, "hf", extra)["max_length"] == 96
    with pytest.raises(ValueError):
        model_args("/m", None, "sglang", settings)  # type: ignore[arg-type]


def test_auto_dtype_is_float32_on_a_cpu_and_keys_the_cache() -> None:
    """A bfloat16 checkpoint is evaluated in float32 on a CPU (several times faster where
    the CPU has no bfloat16 units), the checkpoint's own dtype on a GPU."""
    on_cpu, on_gpu = EvalSettings(device="cpu"), EvalSettings(device="cuda")
    assert model_args("/m", None, "hf", on_cpu)["dtype"] == "float32"
    assert model_args("/m", None, "hf", on_gpu)["dtype"] == "auto"
    assert model_args("/m", None, "vllm", on_cpu)["dtype"] == "float32"
    assert (
        model_args("/m", None, "hf", EvalSettings(device="cpu", dtype="bfloat16"))["dtype"]
        == "bfloat16"
    )


def test_adapter_hash_is_content(tmp_path: Path) -> None:
    a = AdapterRef("a", fake_adapter(tmp_path / "a", b"weights"))
    same = AdapterRef("b", fake_adapter(tmp_path / "b", b"weights"))
    other = AdapterRef("c", fake_adapter(tmp_path / "c", b"other"))
    assert adapter_hash(a) == adapter_hash(same) != adapter_hash(other)
    assert adapter_hash(None) == "base"


def test_parses_lm_eval_output(
    tmp_path: Path, world_model_dir: Path, fake_lm_eval: Callable[[SuiteSpec], FakeLmEval]
) -> None:
    suite = write_suite(tmp_path / "suite", arith("add", "mul"), 7)
    fake_lm_eval(suite)
    run = evaluate(world_model_dir, None, suite)
    assert list(run.tasks) == list(suite.task_names)
    for task in suite.tasks:
        score = run.tasks[task.name]
        rows = (tmp_path / "suite" / f"{task.name}.jsonl").read_text().splitlines()
        assert list(score.items) == [json.loads(r)["id"] for r in rows]
        assert score.n == 7 and score.stderr == 0.1
        assert set(score.items.values()) <= {0.0, 1.0}
        assert score.score == pytest.approx(sum(score.items.values()) / 7)
    again = Evaluation.from_dict(json.loads(json.dumps(run.to_dict())))
    assert again == run


def test_second_gate_evaluates_only_the_candidate(
    tmp_path: Path, world_model_dir: Path, fake_lm_eval: Callable[[SuiteSpec], FakeLmEval]
) -> None:
    suite = write_suite(tmp_path / "suite", arith("add", "sub"), 9)
    fake = fake_lm_eval(suite)
    cache = EvalCache(tmp_path / "cache")
    production = None  # the base is production at first
    first = AdapterRef("v1", fake_adapter(tmp_path / "v1", b"one"))
    prod_run = evaluate(world_model_dir, production, suite, cache=cache)
    cand_run = evaluate(world_model_dir, first, suite, cache=cache)
    assert fake.calls == [None, str(first.path)]
    assert not prod_run.from_cache and not cand_run.from_cache
    gate(prod_run, cand_run, GateRules())

    second = AdapterRef("v2", fake_adapter(tmp_path / "v2", b"two"))
    prod_run = evaluate(world_model_dir, production, suite, cache=cache)
    cand_run = evaluate(world_model_dir, second, suite, cache=cache)
    assert fake.calls == [None, str(first.path), str(second.path)]  # production from cache
    assert prod_run.from_cache and not cand_run.from_cache

    # v1 promoted: production is now v1, and its results are cached already
    prod_run = evaluate(world_model_dir, first, suite, cache=cache)
    evaluate(world_model_dir, second, suite, cache=cache)
    assert len(fake.calls) == 3 and prod_run.from_cache and prod_run.adapter_name == "v1"

    # the same content under another name is the same adapter
    renamed = AdapterRef("v1-again", shutil.copytree(first.path, tmp_path / "v1-copy"))
    assert evaluate(world_model_dir, renamed, suite, cache=cache).from_cache
    assert len(fake.calls) == 3

    # a changed suite or changed settings evaluate production again
    suite2 = write_suite(tmp_path / "suite2", arith("add", "sub"), 9, seed=5)
    fake.suite = suite2
    assert not evaluate(world_model_dir, None, suite2, cache=cache).from_cache
    assert not evaluate(
        world_model_dir, None, suite2, cache=cache, settings=EvalSettings(batch_size=3)
    ).from_cache
    assert len(fake.calls) == 5
    assert len(list((tmp_path / "cache").glob("*.json"))) == 10  # one file per task and run


def test_registry_manifest_drives_the_adapter_hash(tmp_path: Path, world_model_dir: Path) -> None:
    from stages.registry import base_identity, publish

    source = fake_adapter(tmp_path / "trained", b"weights")
    registry = tmp_path / "adapters"
    ident = base_identity(world_model_dir)
    publish(source, registry, version=1, parent=None, base=ident, stage="sft")
    publish(source, registry, version=2, parent=1, base=ident, stage="sft")
    v1, v2 = AdapterRef("v1", registry / "v1"), AdapterRef("v2", registry / "v2")
    # read from the manifests, and equal to the hash of the same files outside the registry
    assert adapter_hash(v1) == adapter_hash(v2) == adapter_hash(AdapterRef("t", source))
    (registry / "v2" / "manifest.json").write_text(
        (registry / "v2" / "manifest.json").read_text().replace(ident.config_sha256, "0" * 64)
    )
    assert adapter_hash(v2) == adapter_hash(v1)  # only the file hashes count
    other = fake_adapter(tmp_path / "other", b"other weights")
    publish(other, registry, version=3, parent=2, base=ident, stage="dpo")
    assert adapter_hash(AdapterRef("v3", registry / "v3")) != adapter_hash(v1)


def test_unreadable_cache_entries_are_misses(tmp_path: Path) -> None:
    cache = EvalCache(tmp_path)
    key, other = "ab" * 32, "cd" * 32
    cache.path(key).write_text("{not json", encoding="utf-8")
    assert cache.get(key, "t") is None
    cache.path(key).write_text('{"format": 99}', encoding="utf-8")
    assert cache.get(key, "t") is None
    cache.path(key).write_text("[1, 2]", encoding="utf-8")
    assert cache.get(key, "t") is None
    assert cache.get(other, "t") is None
    with pytest.raises(ValueError):
        cache.path("../escape")

    score = TaskScore("t", "exact_match", "none", 0.5, 0.1, 2, {"a": 1.0, "b": 0.0})
    cache.put(key, CachedTask(score, "2026-01-01T00:00:00+00:00"))
    assert cache.get(key, "t") == CachedTask(score, "2026-01-01T00:00:00+00:00")
    assert cache.get(key, "u") is None  # another task's results
    shutil.copy(cache.path(key), cache.path(other))
    assert cache.get(other, "t") is None  # a file under another key than its own
    # a whole suite's Evaluation, as the cache held them before (format 1), is a miss
    old = Evaluation("m", None, "base", "b", "s", "x", "hf", {"t": score}, None, "now")
    cache.path(key).write_text(json.dumps(old.to_dict()), encoding="utf-8")
    assert cache.get(key, "t") is None


# -- the per-task cache ----------------------------------------------------------------------


def test_a_task_added_to_the_suite_is_the_only_one_run(
    tmp_path: Path, world_model_dir: Path, fake_lm_eval: Callable[[SuiteSpec], FakeLmEval]
) -> None:
    """The demo's second cycle: the suite gains a task; production's results on the others
    come from the cache, lm-eval runs on the new task alone, and the combined evaluation is
    what an uncached run of the whole suite gives, down to the gate's decision."""
    root = tmp_path / "suite"
    first = write_suite(root, arith("add", "sub"), 9)
    fake = fake_lm_eval(first)
    cache = EvalCache(tmp_path / "cache")
    v1 = AdapterRef("v1", fake_adapter(tmp_path / "v1", b"one"))
    evaluate(world_model_dir, None, first, cache=cache)
    evaluate(world_model_dir, v1, first, cache=cache)
    assert fake.tasks == [["tutord_add", "tutord_sub"]] * 2

    grown = write_suite(root, arith("add", "sub", "mul"), 9)
    fake.suite = grown
    assert grown.hash != first.hash
    prod = evaluate(world_model_dir, v1, grown, cache=cache)
    assert fake.tasks[2:] == [["tutord_mul"]] and fake.calls[2] == str(v1.path)
    assert not prod.from_cache and prod.suite_hash == grown.hash
    assert list(prod.tasks) == ["tutord_add", "tutord_sub", "tutord_mul"]
    assert prod.seconds is not None and prod.seconds >= 0.0

    uncached = evaluate(world_model_dir, v1, grown)  # no cache: one run of every task
    assert fake.tasks[3] == ["tutord_add", "tutord_sub", "tutord_mul"]
    assert prod.tasks == uncached.tasks and prod.scores == uncached.scores
    for name in grown.task_names:
        assert prod.tasks[name].items == uncached.tasks[name].items
        assert prod.tasks[name].responses == uncached.tasks[name].responses
    candidate = evaluate(world_model_dir, None, grown, cache=cache)
    assert fake.tasks[4] == ["tutord_mul"]
    rules = GateRules(block_unseen=False)
    assert gate(prod, candidate, rules).to_dict() == gate(uncached, candidate, rules).to_dict()

    again = evaluate(world_model_dir, v1, grown, cache=cache)
    assert len(fake.tasks) == 5 and again.from_cache and again.seconds == 0.0
    assert again.tasks == uncached.tasks and again.adapter_name == "v1"
    # a suite of one task alone reuses that task's results (the anchored base run)
    alone = write_suite(tmp_path / "alone", arith("sub"), 9)
    assert evaluate(world_model_dir, None, alone, cache=cache).from_cache
    assert len(fake.tasks) == 5


def test_changed_data_of_one_task_reruns_that_task_only(
    tmp_path: Path, world_model_dir: Path, fake_lm_eval: Callable[[SuiteSpec], FakeLmEval]
) -> None:
    root = tmp_path / "suite"
    items = [(f"What follows {i}?", str(i + 1)) for i in range(5)]
    first = write_suite(root, [*arith("add"), successor_task(items)], 6)
    fake = fake_lm_eval(first)
    cache = EvalCache(tmp_path / "cache")
    evaluate(world_model_dir, None, first, cache=cache)
    changed = write_suite(root, [*arith("add"), successor_task(items[:4])], 6)
    fake.suite = changed
    assert changed.task_hash("tutord_add") == first.task_hash("tutord_add")
    assert changed.task_hash("tutord_successor") != first.task_hash("tutord_successor")
    run = evaluate(world_model_dir, None, changed, cache=cache)
    assert fake.tasks == [["tutord_add", "tutord_successor"], ["tutord_successor"]]
    assert run.tasks["tutord_successor"].n == 4 and run.tasks["tutord_add"].n == 6
    assert run.tasks == evaluate(world_model_dir, None, changed).tasks


def test_another_adapter_base_or_settings_misses_every_task(
    tmp_path: Path, world_model_dir: Path, fake_lm_eval: Callable[[SuiteSpec], FakeLmEval]
) -> None:
    suite = write_suite(tmp_path / "suite", arith("add", "sub"), 5)
    fake = fake_lm_eval(suite)
    cache = EvalCache(tmp_path / "cache")
    v1 = AdapterRef("v1", fake_adapter(tmp_path / "v1", b"one"))
    v2 = AdapterRef("v2", fake_adapter(tmp_path / "v2", b"two"))
    evaluate(world_model_dir, v1, suite, cache=cache)
    assert not evaluate(world_model_dir, v2, suite, cache=cache).from_cache
    assert not evaluate(world_model_dir, None, suite, cache=cache).from_cache
    other = EvalSettings(batch_size=3)
    assert not evaluate(world_model_dir, v1, suite, cache=cache, settings=other).from_cache
    other_base = shutil.copytree(world_model_dir, tmp_path / "other-base")
    (other_base / "config.json").write_text(
        (other_base / "config.json").read_text().replace("{", '{"note": 1, ', 1)
    )
    assert not evaluate(other_base, v1, suite, cache=cache).from_cache
    assert fake.tasks == [["tutord_add", "tutord_sub"]] * 5
    assert evaluate(world_model_dir, v1, suite, cache=cache, settings=other).from_cache


# -- slow: the real lm-eval ------------------------------------------------------------------


class CountingSimpleEvaluate:
    def __init__(self) -> None:
        import lm_eval

        self.real = lm_eval.simple_evaluate
        self.calls = 0
        self.tasks: list[list[str]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.tasks.append(list(kwargs["tasks"]))
        return self.real(*args, **kwargs)


@pytest.mark.slow
def test_lm_eval_end_to_end_on_the_tiny_model(
    tmp_path: Path,
    world_model_dir: Path,
    world_adapter: AdapterRef,
    user_tasks_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lm_eval

    from stages.generate.hf import TransformersBackend

    counter = CountingSimpleEvaluate()
    monkeypatch.setattr(lm_eval, "simple_evaluate", counter)
    user = user_tasks_dir
    suite = write_suite(
        tmp_path / "suite",
        arith("add", "sub", "mul"),
        6,
        max_gen_toks=8,
        include_paths=[user],
        user_tasks=["user_echo"],
    )
    cache = EvalCache(tmp_path / "cache")
    settings = EvalSettings(batch_size=8, device="cpu")
    base_run = evaluate(world_model_dir, None, suite, settings=settings, cache=cache)
    adapted = evaluate(world_model_dir, world_adapter, suite, settings=settings, cache=cache)
    assert counter.calls == 2

    for run in (base_run, adapted):
        assert list(run.tasks) == list(suite.task_names)
        for task in suite.tasks:
            score = run.tasks[task.name]
            if task.task is not None:
                rows = (tmp_path / "suite" / f"{task.name}.jsonl").read_text().splitlines()
                assert list(score.items) == [json.loads(r)["id"] for r in rows]
            else:
                assert score.n == 4  # the user's task: ids from lm-eval's doc hashes
            assert set(score.items.values()) <= {0.0, 1.0}
            assert set(score.responses) == set(score.items)
            assert score.score == pytest.approx(sum(score.items.values()) / score.n)
            assert score.stderr is not None
        for name in suite.task_names[:3]:  # max_gen_toks=8 holds (one character per token)
            assert all(len(text) <= 8 for text in run.tasks[name].responses.values())

    # lm-eval saw the same chat-formatted prompts and greedy decoding as tutord's backend
    backend = TransformersBackend(world_model_dir, device="cpu")
    greedy = SamplingParams(max_new_tokens=8)
    for run, adapter in ((base_run, None), (adapted, world_adapter)):
        task = suite.tasks[0]
        rows = [
            json.loads(r)
            for r in (tmp_path / "suite" / f"{task.name}.jsonl").read_text().splitlines()
        ]
        ours = backend.generate(
            [[{"role": "user", "content": r["prompt"]}] for r in rows], greedy, adapter
        )
        assert [run.tasks[task.name].responses[r["id"]] for r in rows] == [g[0] for g in ours]
    backend.close()

    # the adapter changed the generations
    changed = [
        item
        for name in suite.task_names
        for item, text in base_run.tasks[name].responses.items()
        if adapted.tasks[name].responses[item] != text
    ]
    assert changed

    # a second gate: production (the base) comes from the cache, lm-eval runs once more
    again = evaluate(world_model_dir, None, suite, settings=settings, cache=cache)
    assert again.from_cache and counter.calls == 2
    assert again.tasks == base_run.tasks
    result = gate(again, adapted, GateRules())
    assert {t.task for t in result.tasks} == set(suite.task_names)


@pytest.mark.slow
def test_real_lm_eval_runs_only_a_task_added_to_a_cached_suite(
    tmp_path: Path,
    world_model_dir: Path,
    world_adapter: AdapterRef,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """lm-eval is asked for the new task alone, and the evaluation made of cached and fresh
    tasks equals one run of the whole suite: the same scores, items and responses."""
    import lm_eval

    counter = CountingSimpleEvaluate()
    monkeypatch.setattr(lm_eval, "simple_evaluate", counter)
    settings = EvalSettings(batch_size=8, device="cpu")
    cache = EvalCache(tmp_path / "cache")
    first = write_suite(tmp_path / "suite", arith("add", "sub"), 6, max_gen_toks=8)
    evaluate(world_model_dir, world_adapter, first, settings=settings, cache=cache)
    grown = write_suite(tmp_path / "suite", arith("add", "sub", "mul"), 6, max_gen_toks=8)
    combined = evaluate(world_model_dir, world_adapter, grown, settings=settings, cache=cache)
    assert counter.tasks == [["tutord_add", "tutord_sub"], ["tutord_mul"]]
    assert not combined.from_cache and list(combined.tasks) == list(grown.task_names)
    whole = evaluate(world_model_dir, world_adapter, grown, settings=settings)
    assert counter.tasks[2] == list(grown.task_names)
    assert combined.tasks == whole.tasks


def _vllm_missing() -> str | None:
    try:
        return None if importlib.util.find_spec("vllm") else "vllm is not installed"
    except (ImportError, ValueError) as exc:
        return f"vllm cannot be imported: {exc}"


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_backend_agrees_with_hf(
    tmp_path: Path, world_model_dir: Path, world_adapter: AdapterRef
) -> None:
    missing = _vllm_missing()
    if missing:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(missing)
        pytest.skip(missing)
    suite = write_suite(tmp_path / "suite", arith("add"), 6, max_gen_toks=8)
    settings = EvalSettings(batch_size=8, device="cpu")
    hf = evaluate(world_model_dir, world_adapter, suite, backend="hf", settings=settings)
    vllm = evaluate(world_model_dir, world_adapter, suite, backend="vllm", settings=settings)
    name = suite.task_names[0]
    assert set(vllm.tasks[name].items) == set(hf.tasks[name].items)
    assert set(vllm.tasks[name].items.values()) <= {0.0, 1.0}
    assert vllm.tasks[name].responses == hf.tasks[name].responses
