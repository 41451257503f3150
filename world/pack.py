"""The arith world as a task pack: one `judges.tasks.Task` per released family.

`arith_tasks(step, release)` returns the families live at `step` of the release schedule
as tasks: their grader is the world's integer check (`world.verify:verify_integer`), their
answer format "ends in an integer" (`world.verify:has_integer`), their references are the
world's exact answers, their held-out items are the family's held-out split, and their pool
is its training split. This is the only way the rest of tutord reaches the world's tasks.
It imports no torch and does not train or generate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import cache

from judges.tasks import Task, TaskItem
from world.config import WorldConfig
from world.schedule import DEFAULT_RELEASE, live_families
from world.tasks import Problem, TaskFamily, compare_line, families
from world.verify import final_integer

GRADER = "world.verify:verify_integer"
ANSWER_FORMAT = "world.verify:has_integer"
"""An answer parses when it ends in an integer, right or wrong."""
MAX_NEW_TOKENS = 16
"""Longest answer the suite generates: the world's tokens are characters."""


def _item(problem: Problem) -> TaskItem:
    return TaskItem(problem.messages(), problem.answer)


def _explainer(family: TaskFamily) -> Callable[[str, str, str], str | None]:
    """The reason of a verdict on an answer to a family's question (`Task.explain`): the
    number the grader reads in the answer, quoted first; then the worked equation, its
    operands in the order every phrasing states them (as the pretraining corpus writes
    equations), compared with that number as the corpus compares numbers
    (`world.tasks.compare_line`).

    The quote comes first because the judge must read the answer's number, not recompute
    it: with the comparison alone a judge trained 900 steps copied the right result into
    it and failed 0.18 of wrong answers; quoting first, it failed 0.98 and passed 0.94 of
    right ones (`bench/judge_decision.py`, 2026-12-04).
    """

    def explain(text: str, reference: str, response: str) -> str | None:
        numbers = re.findall(r"\d+", text)
        if len(numbers) != 2 or not reference.strip().lstrip("-").isdigit():
            return None
        a, b = (int(n) for n in numbers)
        if family.op(a, b) != int(reference):
            return None
        said = final_integer(response)
        compared = compare_line(int(reference), said)
        return f"Said {'none' if said is None else said}. {a}{family.symbol}{b}={compared}"

    return explain


def _task(family: TaskFamily) -> Task:
    @cache
    def heldout() -> tuple[TaskItem, ...]:
        ordered = sorted(family.all_problems("heldout"), key=lambda p: (p.a, p.b, p.phrasing))
        return tuple(_item(p) for p in ordered)

    def pool(n: int, seed: int) -> Sequence[TaskItem]:
        return [_item(p) for p in family.sample_problems(n, seed=seed, split="train", unique=True)]

    return Task(
        name=family.name,
        grader=GRADER,
        references="the world's exact answers (every prompt has one)",
        heldout=heldout,
        pool=pool,
        max_new_tokens=MAX_NEW_TOKENS,
        answer_format=ANSWER_FORMAT,
        explain=_explainer(family),
    )


def arith_tasks(
    step: int, release: Mapping[str, int] | None = None, config: WorldConfig | None = None
) -> list[Task]:
    """The world's families released at `step` (a count of finished cycles), as tasks.

    >>> [t.name for t in arith_tasks(1)]
    ['add', 'sub']
    >>> add = arith_tasks(0)[0]
    >>> add.is_heldout(add.heldout()[0].prompt), add.is_heldout(add.pool(1, 0)[0].prompt)
    (True, False)
    >>> add.explain("How much is 19 plus 5?", "24", "19+5=23")
    'Said 23. 19+5=24 vs 23: different.'
    >>> add.explain("19 plus 5?", "25", "25") is None
    True
    """
    known = families(config)
    schedule = DEFAULT_RELEASE if release is None else release
    unknown = sorted(set(schedule) - set(known))
    if unknown:
        raise KeyError(f"release schedule names unknown families {unknown}; known: {list(known)}")
    return [_task(known[name]) for name in live_families(step, schedule)]
