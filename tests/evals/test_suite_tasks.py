"""The suite writer: held-out items only, stable ids, suite and per-task hashes, atomic and
idempotent writes, user task folders, and a metric that grades each item with its task's
own grader, 0/1."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from evals.tasks import (
    METRIC_MODULE,
    SuiteSpec,
    SuiteTask,
    read_suite,
    user_suite,
    write_suite,
)
from tests.task_support import arith, successor_task
from world.split import is_heldout
from world.tasks import families


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_writes_heldout_items_with_ids(tmp_path: Path) -> None:
    spec = write_suite(
        tmp_path / "suite", arith("add", "sub", "mul"), max_items_per_task=20, seed=3
    )
    assert spec.task_names == ("tutord_add", "tutord_sub", "tutord_mul")
    assert spec.include_paths == (tmp_path / "suite",)
    root = tmp_path / "suite"
    assert (root / f"{METRIC_MODULE}.py").is_file()
    assert read_suite(root) == spec
    for task in spec.tasks:
        rows = read_jsonl(root / f"{task.name}.jsonl")
        assert len(rows) == task.n_items == 20
        assert all(is_heldout(r["prompt"]) for r in rows)  # never a training prompt
        assert len({r["id"] for r in rows}) == 20
        answers = {p.prompt: p.answer for p in families()[task.task].all_problems("heldout")}
        for r in rows:
            assert r["reference"] == answers[r["prompt"]]
            assert r["grader"] == "world.verify:verify_integer" and r["task"] == task.task
        text = (root / f"{task.name}.yaml").read_text(encoding="utf-8")
        assert "output_type: generate_until" in text
        assert "until: []" in text and "do_sample: false" in text
        assert json.dumps(str(root / f"{task.name}.jsonl")) in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".trash-"))]


def test_all_heldout_items_without_a_cap(tmp_path: Path) -> None:
    spec = write_suite(tmp_path / "s", arith("mul"), max_items_per_task=None)
    expected = len(families()["mul"].all_problems("heldout"))
    assert spec.tasks[0].n_items == expected
    assert len(read_jsonl(tmp_path / "s" / "tutord_mul.jsonl")) == expected


def test_hash_is_content_not_location(tmp_path: Path) -> None:
    a = write_suite(tmp_path / "a", arith("add", "sub"), 10, seed=0)
    b = write_suite(tmp_path / "b", arith("add", "sub"), 10, seed=0)
    assert a.hash == b.hash
    assert write_suite(tmp_path / "c", arith("add", "sub"), 10, seed=1).hash != a.hash
    assert write_suite(tmp_path / "d", arith("add", "sub"), 11, seed=0).hash != a.hash
    assert write_suite(tmp_path / "e", arith("add"), 10, seed=0).hash != a.hash
    assert (
        write_suite(tmp_path / "f", arith("add", "sub"), 10, seed=0, max_gen_toks=8).hash != a.hash
    )


def test_rewrite_is_idempotent_and_replaces_changes(tmp_path: Path) -> None:
    root = tmp_path / "suite"
    first = write_suite(root, arith("add"), 5)
    mtime = (root / "tutord_add.yaml").stat().st_mtime_ns
    assert write_suite(root, arith("add"), 5) == first
    assert (root / "tutord_add.yaml").stat().st_mtime_ns == mtime  # left as it was
    changed = write_suite(root, arith("add", "mul"), 5)
    assert changed.hash != first.hash
    assert (root / "tutord_mul.yaml").is_file()
    assert read_suite(root) == changed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite"]


def test_task_hashes_cover_each_task_alone(tmp_path: Path) -> None:
    """A task's hash (the key of its cached results) is its own content: not the suite's
    location nor its other tasks, so adding a task or changing another task's data keeps it."""
    pair = write_suite(tmp_path / "a", arith("add", "sub"), 10)
    grown = write_suite(tmp_path / "b", arith("add", "sub", "mul"), 10)
    alone = write_suite(tmp_path / "c", arith("sub"), 10)
    assert grown.hash != pair.hash
    assert [grown.task_hash(n) for n in pair.task_names] == list(pair.task_hashes)
    assert alone.task_hash("tutord_sub") == pair.task_hash("tutord_sub")
    assert len(set(grown.task_hashes)) == 3 and grown.hash not in grown.task_hashes
    assert read_suite(tmp_path / "b").task_hashes == grown.task_hashes
    for other in (
        write_suite(tmp_path / "d", arith("add", "sub"), 11),  # other items
        write_suite(tmp_path / "e", arith("add", "sub"), 10, seed=1),
        write_suite(tmp_path / "f", arith("add", "sub"), 10, max_gen_toks=8),
        write_suite(tmp_path / "g", arith("add", "sub"), 10, prefix="mine"),
    ):
        assert not set(other.task_hashes) & set(pair.task_hashes)

    items = [(f"What follows {i}?", str(i + 1)) for i in range(4)]
    before = write_suite(tmp_path / "h", [*arith("add"), successor_task(items)], 10)
    after = write_suite(tmp_path / "h", [*arith("add"), successor_task(items[:3])], 10)
    assert after.task_hash("tutord_add") == before.task_hash("tutord_add")
    assert after.task_hash("tutord_successor") != before.task_hash("tutord_successor")
    with pytest.raises(KeyError):
        pair.task_hash("tutord_mul")


def test_a_suite_without_task_hashes_keys_tasks_by_the_whole_suite(tmp_path: Path) -> None:
    """A suite built by hand, or read from an older suite.json, has no per-task hashes:
    each task's key then rests on the whole suite's hash, so nothing unvouched is reused."""
    spec = write_suite(tmp_path / "s", arith("add", "sub"), 5)
    data = spec.to_dict()
    del data["task_hashes"]
    bare = SuiteSpec.from_dict(data)
    assert bare.task_hashes == ()
    assert bare.task_hash("tutord_add") not in spec.task_hashes
    assert bare.task_hash("tutord_add") != bare.task_hash("tutord_sub")
    other = replace(bare, hash="0" * 64)
    assert other.task_hash("tutord_add") != bare.task_hash("tutord_add")
    with pytest.raises(ValueError, match="task hashes"):
        replace(spec, task_hashes=spec.task_hashes[:1])


def test_user_tasks_join_the_suite(tmp_path: Path, user_tasks_dir: Path) -> None:
    user = user_tasks_dir
    spec = write_suite(
        tmp_path / "suite", arith("add"), 5, include_paths=[user], user_tasks=["user_echo"]
    )
    assert spec.task_names == ("tutord_add", "user_echo")
    assert spec.include_paths == (tmp_path / "suite", user)
    assert spec.task("user_echo") == SuiteTask(name="user_echo")
    before = spec.hash
    (user / "echo.jsonl").write_text('{"question": "Say 9.", "answer": "9"}\n', encoding="utf-8")
    after = write_suite(
        tmp_path / "suite", arith("add"), 5, include_paths=[user], user_tasks=["user_echo"]
    )
    assert after.hash != before  # the user's data is part of the hash
    # the user's folder is in every task's hash: which of its files define a task, or
    # shadow one, cannot be told from outside
    assert set(after.task_hashes).isdisjoint(spec.task_hashes)
    plain = write_suite(tmp_path / "plain", arith("add"), 5)
    assert plain.task_hash("tutord_add") != spec.task_hash("tutord_add")
    strict = write_suite(
        tmp_path / "suite",
        arith("add"),
        5,
        include_paths=[user],
        user_tasks=[SuiteTask(name="user_echo", filter="strict")],
    )
    assert strict.task_hash("user_echo") != after.task_hash("user_echo")
    assert strict.task_hash("tutord_add") == after.task_hash("tutord_add")
    only_user = user_suite([user], ["user_echo"])
    assert only_user.root is None and only_user.task_names == ("user_echo",)
    with pytest.raises(ValueError, match="no_such_task"):
        write_suite(
            tmp_path / "x", arith("add"), 5, include_paths=[user], user_tasks=["no_such_task"]
        )


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="repeat"):
        write_suite(tmp_path / "s", arith("add", "add"), 5)
    with pytest.raises(ValueError):
        write_suite(tmp_path / "s", [], 5)
    with pytest.raises(ValueError):
        write_suite(tmp_path / "s", arith("add"), 0)
    with pytest.raises(ValueError, match="no held-out items"):
        write_suite(tmp_path / "s", [successor_task([])], 5)
    assert not (tmp_path / "s").exists()


def _metric(path: Path) -> ModuleType:
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("metric_under_test", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_metric_grades_with_the_items_grader(tmp_path: Path) -> None:
    spec = write_suite(tmp_path / "s", [successor_task([("What comes after 17?", "18")])], None)
    assert spec.task_names == ("tutord_successor",)
    module = _metric(tmp_path / "s" / f"{METRIC_MODULE}.py")
    (row,) = read_jsonl(tmp_path / "s" / "tutord_successor.jsonl")
    assert row["grader"] == "numeric" and row["reference"] == "18"
    assert module.process_results(row, ["It is 18."]) == {"exact_match": 1.0}
    assert module.process_results(row, ["18.5"]) == {"exact_match": 0.0}
    exact = dict(row, grader="exact")
    assert module.process_results(exact, ["It is 18."]) == {"exact_match": 0.0}
    assert module.process_results(exact, ["18"]) == {"exact_match": 1.0}


def test_metric_scores_the_final_integer(tmp_path: Path) -> None:
    write_suite(tmp_path / "s", arith("add"), 3)
    module = _metric(tmp_path / "s" / f"{METRIC_MODULE}.py")
    doc = {"reference": "7", "prompt": "q", "grader": "world.verify:verify_integer"}
    assert module.process_results(doc, ["7"]) == {"exact_match": 1.0}
    assert module.process_results(doc, ["3+4=7"]) == {"exact_match": 1.0}
    assert module.process_results(doc, ["The answer is 7."]) == {"exact_match": 1.0}
    assert module.process_results(doc, ["7 apples, or 8"]) == {"exact_match": 0.0}
    assert module.process_results(doc, ["seven"]) == {"exact_match": 0.0}
    assert module.process_results(doc, [""]) == {"exact_match": 0.0}


def test_lm_eval_loads_the_tasks(tmp_path: Path, user_tasks_dir: Path) -> None:
    from lm_eval.tasks import TaskManager

    user = user_tasks_dir
    spec = write_suite(
        tmp_path / "s", arith("add", "sub"), 4, include_paths=[user], user_tasks=["user_echo"]
    )
    manager = TaskManager(include_path=[str(p) for p in spec.include_paths], include_defaults=False)
    loaded = manager.load(list(spec.task_names))["tasks"]
    assert set(loaded) == set(spec.task_names)
    add = loaded["tutord_add"]
    docs = list(add.test_docs())
    assert len(docs) == 4
    assert add.config.generation_kwargs["until"] == []  # lm-eval adds the eos token
    assert add.config.generation_kwargs["max_gen_toks"] == 16
    assert add.doc_to_text(docs[0]) == docs[0]["prompt"]
    assert add.doc_to_target(docs[0]) == docs[0]["reference"]


def test_a_task_has_the_same_items_alone_as_beside_others(tmp_path: Path) -> None:
    """The base's run on a suite of the anchored tasks alone pairs with a candidate's run on
    the whole suite (`gate.anchor_tasks`): the same items, under the same ids."""

    def ids(spec_root: Path, name: str) -> list[str]:
        lines = (spec_root / f"tutord_{name}.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line)["id"] for line in lines]

    whole = write_suite(tmp_path / "whole", arith("add", "sub"), 10, seed=0)
    alone = write_suite(tmp_path / "alone", arith("sub"), 10, seed=0)
    assert alone.hash != whole.hash
    assert ids(alone.root, "sub") == ids(whole.root, "sub") and len(ids(alone.root, "sub")) == 10
