"""Task records for tests: the world's tasks by name, and a task declared without the world."""

from __future__ import annotations

from judges.tasks import Task, TaskItem
from world.pack import arith_tasks


def arith(*names: str) -> list[Task]:
    """The world's tasks of these names, in this order."""
    tasks = {t.name: t for t in arith_tasks(step=10)}
    return [tasks[n] for n in names]


def successor_task(heldout: list[tuple[str, str]]) -> Task:
    """A task declared without the world: its own items and the `numeric` grader."""
    items = tuple(TaskItem([{"role": "user", "content": q}], a) for q, a in heldout)
    return Task(
        name="successor",
        grader="numeric",
        references="test items",
        heldout=lambda: items,
        pool=lambda n, seed: [],
    )
