"""lm-eval task folders built from tutord's own tasks: the gate's regression suite.

`write_suite` writes, per `judges.tasks.Task`, one lm-eval `generate_until` task over that
task's HELD-OUT items (never trained on), as a YAML file plus a JSONL data file
(`dataset_path: json`), and one small metric module whose `process_results` grades the
answer with the grader the item names (`judges.graders.resolve_grader`, the task's own
grader) against the reference: a per-item 0/1 `exact_match` (1 when the grader gives 1.0)
that lm-eval's `log_samples` records for every item. Decoding is greedy, stops at the
tokenizer's end-of-sequence token (lm-eval adds it) and writes at most the task's
`max_new_tokens`; the chat template is applied at evaluation time
(`simple_evaluate(apply_chat_template=True)`, `evals.run.EvalSettings`). User-provided
lm-eval task folders (include paths + task names) join the same suite. The folder is written
atomically and described by a `SuiteSpec` whose `hash` is a content hash of everything that
defines the suite (task YAML, data, scoring code, graders, user folders), independent of
where the folder lies, and per task (`SuiteSpec.task_hash`) a hash of what defines that
task's results alone (its `SuiteTask` fields, YAML, data and grader, plus what every task
depends on: scoring code, user folders, `include_defaults`): the key under which
`evals.cache.EvalCache` stores that task's results.

It does not run lm-eval (see `evals.run`) and does not decide anything (see `evals.gate`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from judges.graders import grader_fingerprint
from judges.tasks import Task, TaskItem
from stages.atomic import fsync_dir

log = logging.getLogger(__name__)

SUITE_FORMAT = 3
"""3: per-task hashes (`SuiteSpec.task_hashes`); it is part of every hash."""
SUITE_FILE = "suite.json"
METRIC_MODULE = "tutord_metric"
"""The metric module's file stem inside a suite folder (`!function` resolves it there)."""
DEFAULT_PREFIX = "tutord"
_DATA_PLACEHOLDER = "{DATA_FILE}"
_TMP_PREFIX = ".tmp-"

# Written into every suite folder as METRIC_MODULE + ".py"; lm-eval loads it from there for
# `process_results: !function tutord_metric.process_results`. It needs tutord importable
# (it is, in the process that runs `evals.run.evaluate`).
METRIC_SOURCE = '''"""Scoring of tutord's tasks for lm-eval (written by evals.tasks).

Each item names its task's grader; the answer is right when that grader scores it 1.0:
a 0/1 `exact_match` per item.
"""

from judges.graders import resolve_grader


def process_results(doc, results):
    """lm-eval's per-document hook: `results` holds the one filtered generation."""
    answer = results[0] if results else ""
    grade = resolve_grader(doc["grader"])
    score = grade(
        [doc["prompt"]], [answer if isinstance(answer, str) else ""], reference=[doc["reference"]]
    )[0]
    return {"exact_match": 1.0 if score is not None and score >= 1.0 else 0.0}
'''


@dataclass(frozen=True)
class SuiteTask:
    """One lm-eval task of a suite and the metric whose per-item scores the gate pairs.

    name: the lm-eval task name (a task, not a group).
    metric: the metric key in lm-eval's results and logged samples ("exact_match").
    filter: the filter key whose results count ("none" when the task defines no filter).
    task: the tutord task it was built from; None for a user-provided lm-eval task.
    n_items: how many items the task has, when known (arith tasks).
    """

    name: str
    metric: str = "exact_match"
    filter: str = "none"
    task: str | None = None
    n_items: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metric": self.metric,
            "filter": self.filter,
            "task": self.task,
            "n_items": self.n_items,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuiteTask:
        return cls(
            name=str(data["name"]),
            metric=str(data.get("metric", "exact_match")),
            filter=str(data.get("filter", "none")),
            task=data.get("task"),
            n_items=data.get("n_items"),
        )


@dataclass(frozen=True)
class SuiteSpec:
    """A regression suite: where lm-eval finds its tasks, which tasks, and its content hash.

    root: the folder `write_suite` wrote (None for a suite of user folders only).
    include_paths: folders for `lm_eval.tasks.TaskManager(include_path=...)`, root first.
    tasks: the tasks, in order.
    hash: sha256 over the suite's defining content (not its location).
    include_defaults: whether lm-eval's built-in tasks are indexed too (needed only when a
        user task is one of them; indexing them costs seconds).
    task_hashes: per task, in the order of `tasks`, sha256 of what defines its results
        (`task_hashes`); empty when unknown (then `task_hash` falls back to `hash`).
    """

    root: Path | None
    include_paths: tuple[Path, ...]
    tasks: tuple[SuiteTask, ...]
    hash: str
    include_defaults: bool = False
    task_hashes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate task names in suite: {names}")
        if self.task_hashes and len(self.task_hashes) != len(self.tasks):
            raise ValueError(f"{len(self.task_hashes)} task hashes for {len(self.tasks)} tasks")
        object.__setattr__(self, "include_paths", tuple(Path(p) for p in self.include_paths))
        object.__setattr__(self, "task_hashes", tuple(str(h) for h in self.task_hashes))

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def task(self, name: str) -> SuiteTask:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task {name!r} in suite; tasks: {', '.join(self.task_names)}")

    def task_hash(self, name: str) -> str:
        """sha256 of what defines task `name`'s results; for a suite without `task_hashes`
        (built by hand), one made of the whole suite's hash and the name."""
        index = self.task_names.index(self.task(name).name)
        return (
            self.task_hashes[index] if self.task_hashes else _sha256(f"{self.hash}/{name}".encode())
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SUITE_FORMAT,
            "root": None if self.root is None else str(self.root),
            "include_paths": [str(p) for p in self.include_paths],
            "tasks": [t.to_dict() for t in self.tasks],
            "hash": self.hash,
            "include_defaults": self.include_defaults,
            "task_hashes": list(self.task_hashes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuiteSpec:
        return cls(
            root=None if data.get("root") is None else Path(data["root"]),
            include_paths=tuple(Path(p) for p in data["include_paths"]),
            tasks=tuple(SuiteTask.from_dict(t) for t in data["tasks"]),
            hash=str(data["hash"]),
            include_defaults=bool(data.get("include_defaults", False)),
            task_hashes=tuple(data.get("task_hashes") or ()),
        )


@dataclass(frozen=True)
class _TaskFiles:
    name: str
    task: str
    yaml_template: str
    data: bytes
    n_items: int
    grader: str
    """The grader's fingerprint (`judges.graders.grader_fingerprint`)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def item_id(task: str, item: TaskItem) -> str:
    """The stable id of a suite item: its task and a hash of its prompt text.

    >>> item_id("add", TaskItem([{"role": "user", "content": "What is 3+4?"}], "7"))
    'add-9967e62b29b6bb11'
    """
    return f"{task}-{_sha256(item.text.encode('utf-8'))[:16]}"


def suite_items(task: Task, max_items: int | None, seed: int) -> list[TaskItem]:
    """The task's held-out items: all of them, or `max_items` drawn without replacement under
    `seed` (the same seed always gives the same items, in the same order)."""
    pool = list(task.heldout())
    if max_items is not None:
        if max_items < 1:
            raise ValueError(f"max_items_per_task must be >= 1 or None, got {max_items}")
        rng = random.Random(f"evals-suite:{task.name}:{seed}")
        rng.shuffle(pool)
        pool = pool[:max_items]
    if not pool:
        raise ValueError(f"task {task.name!r} has no held-out items")
    return pool


def _task_yaml(name: str, task: str, max_gen_toks: int) -> str:
    """The task's YAML, with `_DATA_PLACEHOLDER` where the data file's path goes.

    Strings are written as JSON, which YAML reads as flow scalars; `!function` is lm-eval's
    tag for a Python callable (resolved next to the YAML file). `until: []` leaves the
    tokenizer's end-of-sequence token (lm-eval adds it) as the only stop."""
    q = json.dumps
    return "\n".join(
        [
            f"# tutord regression task: held-out items of the task {task}.",
            "# Written by evals.tasks.write_suite; do not edit (the suite hash covers it).",
            f"task: {q(name)}",
            "dataset_path: json",
            "dataset_kwargs:",
            "  data_files:",
            f"    test: {_DATA_PLACEHOLDER}",
            "test_split: test",
            "output_type: generate_until",
            'doc_to_text: "{{prompt}}"',
            'doc_to_target: "{{reference}}"',
            'target_delimiter: ""',
            "num_fewshot: 0",
            "generation_kwargs:",
            "  until: []",
            "  do_sample: false",
            "  temperature: 0.0",
            f"  max_gen_toks: {int(max_gen_toks)}",
            f"process_results: !function {METRIC_MODULE}.process_results",
            "metric_list:",
            "  - metric: exact_match",
            "    aggregation: mean",
            "    higher_is_better: true",
            "metadata:",
            "  version: 1",
            f"  tutord_task: {q(task)}",
            "",
        ]
    )


def _task_data(task: Task, items: Sequence[TaskItem]) -> bytes:
    rows = [
        {
            "id": item_id(task.name, item),
            "task": task.name,
            "prompt": item.text,
            "reference": item.reference,
            "grader": task.grader,
        }
        for item in items
    ]
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def _folder_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (caches skipped), keyed by relative path."""
    if not path.is_dir():
        raise FileNotFoundError(f"lm-eval task folder {path} does not exist")
    out: dict[str, str] = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if not p.is_file() or any(
            part in ("__pycache__", ".ipynb_checkpoints") for part in rel.parts
        ):
            continue
        out[rel.as_posix()] = _sha256(p.read_bytes())
    return out


def _check_user_tasks(
    include_paths: Sequence[Path], tasks: Sequence[SuiteTask], include_defaults: bool
) -> None:
    """Fail early when lm-eval cannot find a user task in the given folders."""
    if not tasks:
        return
    from lm_eval.tasks import TaskManager

    manager = TaskManager(
        include_path=[str(p) for p in include_paths], include_defaults=include_defaults
    )
    known = set(manager.all_tasks)
    missing = [t.name for t in tasks if t.name not in known]
    if missing:
        raise ValueError(
            f"lm-eval finds no task named {', '.join(missing)} in {[str(p) for p in include_paths]}"
            + ("" if include_defaults else " (built-in tasks are not indexed: include_defaults)")
        )


def shared_description(user_paths: Sequence[Path], include_defaults: bool) -> dict[str, Any]:
    """What every task's results depend on besides its own files: the suite format, the
    metric module, the user's task folders, in order (lm-eval indexes all of them for every
    task; which files define a user task cannot be told from outside) and whether lm-eval's
    built-in tasks are indexed. No absolute paths."""
    return {
        "format": SUITE_FORMAT,
        "metric_source": _sha256(METRIC_SOURCE.encode("utf-8")),
        "user_folders": [_folder_digest(p) for p in user_paths],
        "include_defaults": include_defaults,
    }


def _own_files(t: _TaskFiles) -> dict[str, str]:
    yaml = _sha256(t.yaml_template.encode("utf-8"))
    return {"name": t.name, "grader": t.grader, "yaml": yaml, "data": _sha256(t.data)}


def _digest(description: dict[str, Any]) -> str:
    return _sha256(json.dumps(description, sort_keys=True, separators=(",", ":")).encode())


def suite_hash(
    own: Sequence[_TaskFiles], user_tasks: Sequence[SuiteTask], shared: dict[str, Any]
) -> str:
    """sha256 of the canonical description of a suite (`shared` is `shared_description`)."""
    own_files = [_own_files(t) for t in own]
    return _digest({**shared, "tasks": own_files, "user_tasks": [t.to_dict() for t in user_tasks]})


def task_hashes(
    own: Sequence[_TaskFiles], user_tasks: Sequence[SuiteTask], shared: dict[str, Any]
) -> tuple[str, ...]:
    """Per task (own tasks, then user tasks), sha256 of what defines its results: `shared`,
    its `SuiteTask` fields and, for an own task, its YAML, data and grader. A task's hash
    does not depend on the other tasks of the suite."""
    own_hashes = [
        _digest({**shared, "kind": "task", "spec": _spec(t).to_dict(), "files": _own_files(t)})
        for t in own
    ]
    user_hashes = [_digest({**shared, "kind": "task", "spec": t.to_dict()}) for t in user_tasks]
    return (*own_hashes, *user_hashes)


def _spec(t: _TaskFiles) -> SuiteTask:
    return SuiteTask(name=t.name, task=t.task, n_items=t.n_items)


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def read_suite(root: Path) -> SuiteSpec:
    """The `SuiteSpec` recorded in a folder `write_suite` wrote."""
    return SuiteSpec.from_dict(json.loads((Path(root) / SUITE_FILE).read_text(encoding="utf-8")))


def write_suite(
    out_dir: Path,
    tasks: Sequence[Task],
    max_items_per_task: int | None,
    seed: int = 0,
    *,
    include_paths: Sequence[Path | str] = (),
    user_tasks: Sequence[str | SuiteTask] = (),
    include_defaults: bool = False,
    max_gen_toks: int | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> SuiteSpec:
    """Write the regression suite's lm-eval task folder at `out_dir` and return its spec.

    One lm-eval task `<prefix>_<task>` per task in `tasks`, over its held-out items (all, or
    `max_items_per_task` of them drawn under `seed`), generating at most the task's
    `max_new_tokens` (or `max_gen_toks` for every task), plus `user_tasks` (names, or
    `SuiteTask`s naming their metric and filter) found in the lm-eval folders
    `include_paths`. The folder holds `<task>.yaml`, `<task>.jsonl`, the metric module and
    `suite.json`; it is built in a temporary folder beside `out_dir` and renamed into place.
    When `out_dir` already holds a suite with the same hash it is left as it is.
    """
    out_dir = Path(out_dir).resolve()
    if max_gen_toks is not None and max_gen_toks < 1:
        raise ValueError(f"max_gen_toks must be >= 1, got {max_gen_toks}")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"tasks repeat: {names}")
    if not tasks and not user_tasks:
        raise ValueError("a suite needs at least one task")

    own: list[_TaskFiles] = []
    for task in tasks:
        name = f"{prefix}_{task.name}"
        items = suite_items(task, max_items_per_task, seed)
        own.append(
            _TaskFiles(
                name=name,
                task=task.name,
                yaml_template=_task_yaml(name, task.name, max_gen_toks or task.max_new_tokens),
                data=_task_data(task, items),
                n_items=len(items),
                grader=grader_fingerprint(task.grader),
            )
        )
    user_paths = tuple(Path(p).resolve() for p in include_paths)
    user = tuple(t if isinstance(t, SuiteTask) else SuiteTask(name=str(t)) for t in user_tasks)
    if user and not user_paths and not include_defaults:
        raise ValueError("user tasks need include_paths (or include_defaults for built-in tasks)")
    _check_user_tasks(user_paths, user, include_defaults)
    shared = shared_description(user_paths, include_defaults)
    digest = suite_hash(own, user, shared)

    specs = tuple(_spec(t) for t in own) + user
    spec = SuiteSpec(
        root=out_dir,
        include_paths=(out_dir, *user_paths),
        tasks=specs,
        hash=digest,
        include_defaults=include_defaults,
        task_hashes=task_hashes(own, user, shared),
    )

    if (out_dir / SUITE_FILE).is_file():
        try:
            existing = read_suite(out_dir)
        except (ValueError, KeyError, OSError):
            existing = None
        if existing is not None and existing == spec:
            log.info("suite %s unchanged at %s", digest[:12], out_dir)
            return existing

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f"{_TMP_PREFIX}{out_dir.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_file(tmp / f"{METRIC_MODULE}.py", METRIC_SOURCE.encode("utf-8"))
        for t in own:
            data_name = f"{t.name}.jsonl"
            _write_file(tmp / data_name, t.data)
            # the final location: the folder is renamed into place below
            text = t.yaml_template.replace(_DATA_PLACEHOLDER, json.dumps(str(out_dir / data_name)))
            _write_file(tmp / f"{t.name}.yaml", text.encode("utf-8"))
        _write_file(tmp / SUITE_FILE, json.dumps(spec.to_dict(), indent=2).encode("utf-8"))
        fsync_dir(tmp)
        trash = None
        if out_dir.exists():
            trash = out_dir.parent / f".trash-{out_dir.name}-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, trash)
        os.rename(tmp, out_dir)
        fsync_dir(out_dir.parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "wrote suite %s at %s: %s",
        digest[:12],
        out_dir,
        ", ".join(f"{t.name} ({t.n_items} items)" if t.n_items else t.name for t in specs),
    )
    return spec


def user_suite(
    include_paths: Sequence[Path | str],
    tasks: Sequence[str | SuiteTask],
    *,
    include_defaults: bool = False,
) -> SuiteSpec:
    """A suite of user-provided lm-eval tasks only (nothing is written)."""
    paths = tuple(Path(p).resolve() for p in include_paths)
    user = tuple(t if isinstance(t, SuiteTask) else SuiteTask(name=str(t)) for t in tasks)
    if not user:
        raise ValueError("a suite needs at least one task")
    _check_user_tasks(paths, user, include_defaults)
    shared = shared_description(paths, include_defaults)
    return SuiteSpec(
        root=None,
        include_paths=paths,
        tasks=user,
        hash=suite_hash((), user, shared),
        include_defaults=include_defaults,
        task_hashes=task_hashes((), user, shared),
    )
