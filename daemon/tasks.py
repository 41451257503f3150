"""Which tasks are live: task packs plus the user's `[tasks.NAME]` tables, as `Task`s.

`load_tasks` builds the task records the rest of the daemon asks (synthesis for prompts and
graders, the gate for held-out items, the report for its probe, assembly for RL rewards):
the tasks of every configured pack at the current release step (the embedded world's
families arrive over cycles) and every user task declared in `tutord.toml`, whose prompts
file is read here and split by a stable hash into training and held-out items. A pack is
imported only when it is used. It does not grade, generate or write anything.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from daemon.home import Home
from daemon.models import Cycle
from daemon.policy import task_packs
from daemon.settings import Settings, SettingsError
from daemon.task_settings import TaskSettings
from judges.graders import GraderError, check_grader_spec
from judges.tasks import Task, TaskItem
from replay.db import session_scope


class TaskError(SettingsError):
    """A task that cannot be built; the message names the key, file and line."""


def _arith_pack(settings: Settings, step: int) -> list[Task]:
    from world.pack import arith_tasks

    return arith_tasks(step, settings.world.release)


PACKS: dict[str, Callable[[Settings, int], list[Task]]] = {"arith": _arith_pack}
"""Task packs by name: a callable (settings, release step) -> the pack's live tasks."""


def release_step(engine: Engine) -> int:
    """How far release schedules have advanced: the number of finished cycles."""
    with session_scope(engine) as session:
        return int(
            session.execute(
                select(func.count()).select_from(Cycle).where(Cycle.state.in_(("done", "skipped")))
            ).scalar_one()
        )


def in_heldout_bucket(key: str, percent: int) -> bool:
    """Whether a prompt key falls in the held-out `percent` of a stable sha256 split.

    >>> sum(in_heldout_bucket(f"What comes after {i}?", 20) for i in range(1000))
    209
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value)
        and value[-1].get("role") == "user"
    ):
        return [{"role": str(m.get("role", "user")), "content": m["content"]} for m in value]
    raise TaskError(f"{where}: prompt: expected text or chat messages ending with a user turn")


def read_items(path: Path, key: str) -> list[TaskItem]:
    """The items of a task's prompts file; an unusable line is an error naming it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"key '{key}': cannot read {path}: {exc}") from exc
    items: list[TaskItem] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise TaskError(f"{where}: not JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise TaskError(f"{where}: expected a JSON object")
        unknown = sorted(set(row) - {"prompt", "reference", "id"})
        if unknown:
            raise TaskError(f"{where}: unknown field {unknown[0]!r}")
        reference = row.get("reference")
        if not isinstance(reference, str | int | float) or isinstance(reference, bool):
            raise TaskError(f"{where}: reference: expected text or a number")
        item = TaskItem(_messages(row.get("prompt"), where), str(reference))
        if item.key not in seen:
            seen.add(item.key)
            items.append(item)
    if not items:
        raise TaskError(f"key '{key}': {path} holds no prompts")
    return items


def _resolve(home: Home, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else home.root / path


def _grader_spec(home: Home, key: str, spec: str) -> str:
    """A grader spec with its json_schema file resolved against the home, checked."""
    if spec.startswith("json_schema:"):
        spec = "json_schema:" + str(_resolve(home, spec.removeprefix("json_schema:")))
    try:
        return check_grader_spec(spec)
    except GraderError as exc:
        raise TaskError(f"key '{key}': {exc}") from exc


def user_task(home: Home, name: str, spec: TaskSettings) -> Task:
    """The `Task` declared by `[tasks.<name>]`."""
    key = f"tasks.{name}"
    grader = _grader_spec(home, f"{key}.grader", spec.grader)
    answer_format = (
        None
        if spec.answer_format is None
        else _grader_spec(home, f"{key}.answer_format", spec.answer_format)
    )
    items = read_items(_resolve(home, spec.prompts), f"{key}.prompts") if spec.prompts else []
    heldout = tuple(i for i in items if in_heldout_bucket(i.key, spec.heldout_percent))
    train = [i for i in items if not in_heldout_bucket(i.key, spec.heldout_percent)]
    if spec.lm_eval_tasks and not spec.lm_eval:
        raise TaskError(f"key '{key}.lm_eval_tasks': needs '{key}.lm_eval' (the folder)")

    def pool(n: int, seed: int) -> Sequence[TaskItem]:
        chosen = list(train)
        random.Random(f"{name}:{seed}").shuffle(chosen)
        return chosen[:n]

    return Task(
        name=name,
        grader=grader,
        references=(
            f"{spec.prompts} ({len(items)} prompts) and interactions labelled {name!r}"
            if spec.prompts
            else f"interactions labelled {name!r}"
        ),
        heldout=lambda: heldout,
        pool=pool,
        max_new_tokens=spec.max_new_tokens,
        lm_eval_include=str(_resolve(home, spec.lm_eval)) if spec.lm_eval else None,
        lm_eval_tasks=tuple(spec.lm_eval_tasks),
        answer_format=answer_format,
    )


def load_tasks(home: Home, settings: Settings, step: int) -> dict[str, Task]:
    """Every live task by name: the packs' (at release `step`), then the user's own."""
    tasks: dict[str, Task] = {}
    for pack in task_packs(settings):
        if pack not in PACKS:
            raise TaskError(f"key 'task_packs': unknown pack {pack!r}; known: {', '.join(PACKS)}")
        for task in PACKS[pack](settings, step):
            tasks[task.name] = task
    for name, spec in settings.tasks.items():
        if name in tasks:
            raise TaskError(f"key 'tasks.{name}': a task pack already defines {name!r}")
        tasks[name] = user_task(home, name, spec)
    return tasks


def grader_spec(settings: Settings, tasks: dict[str, Task], task: str | None) -> str | None:
    """The grader spec of a task label: the task's own, else `synth.default_verifier` (for a
    label no task declares); None when that is "none"."""
    if task in tasks:
        return tasks[task].grader
    fallback = settings.synth.default_verifier
    return None if fallback == "none" else fallback


def live_tasks(engine: Engine, home: Home, settings: Settings) -> dict[str, Task]:
    """`load_tasks` at the release step the database has reached."""
    return load_tasks(home, settings, release_step(engine))
