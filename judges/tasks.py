"""A task as one record: its name, grader, references, held-out items and prompt pool.

Everything that asks "what is task X?" (synthesis, the regression suite, the report, the
RL reward) asks a `Task`. A task pack (the embedded world, a user's `[tasks.NAME]` table)
produces `Task`s; nothing downstream knows which pack a task came from. Held-out items are
matched by `prompt_key` (the whitespace-normalized text of the last user message), which is
how training data is kept apart from them. It does not read configuration or files (see
`daemon/tasks.py`) and does not run graders (see `judges/graders.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

Messages = list[dict[str, str]]


def prompt_key(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    """The identity of a prompt for held-out matching: its last user message (or the text),
    whitespace collapsed.

    >>> prompt_key([{"role": "user", "content": " What comes  after 17? "}])
    'What comes after 17?'
    >>> prompt_key("What comes after 17?")
    'What comes after 17?'
    """
    if isinstance(prompt, str):
        text = prompt
    else:
        users = [m for m in prompt if m.get("role") == "user"]
        last = users[-1] if users else (prompt[-1] if prompt else {})
        text = str(last.get("content", ""))
    return " ".join(text.split())


@dataclass(frozen=True)
class TaskItem:
    """One prompt of a task with its reference answer (None: no reference known)."""

    prompt: Messages
    reference: str | None

    @property
    def key(self) -> str:
        return prompt_key(self.prompt)

    @property
    def text(self) -> str:
        """The last user message."""
        return prompt_key(self.prompt)


@dataclass(frozen=True)
class Task:
    """One task. `heldout` and `pool` are callables so that building the record is cheap;
    `heldout()` returns every held-out item (never trained on), `pool(n, seed)` up to `n`
    distinct training prompts for synthesis, deterministic under `seed`."""

    name: str
    grader: str
    """A grader spec (`judges.graders`): `numeric`, `regex:...`, `module:function`, ..."""
    references: str
    """Where the task's references come from, in words (shown by `tutord tasks`)."""
    heldout: Callable[[], Sequence[TaskItem]]
    pool: Callable[[int, int], Sequence[TaskItem]]
    max_new_tokens: int = 32
    """Longest answer the regression suite generates for this task."""
    lm_eval_include: str | None = None
    """An lm-eval task folder of the user's, evaluated beside the held-out items."""
    lm_eval_tasks: tuple[str, ...] = ()
    """lm-eval task names in that folder."""
    answer_format: str | None = None
    """A grader spec scoring 1.0 when an answer has the task's format (it parses), right or
    wrong; None: the task declares no format. The curriculum's parse rate reads it."""
    explain: Callable[[str, str, str], str | None] | None = None
    """(prompt text, reference, response) -> the reason of a verdict: the worked answer
    and what the response answered (e.g. `Should be 19+5=24, got 23.`), or None. The
    judge's training verdicts state it, so the judge learns to work the answer out and
    read the response's answer before comparing; None: the verdict states the reference."""

    @cached_property
    def heldout_keys(self) -> frozenset[str]:
        return frozenset(item.key for item in self.heldout())

    def is_heldout(self, prompt: str | Sequence[Mapping[str, Any]]) -> bool:
        return prompt_key(prompt) in self.heldout_keys


def heldout_keys(tasks: Iterable[Task]) -> frozenset[str]:
    """The held-out prompt keys of all `tasks` together: what training data must avoid."""
    keys: set[str] = set()
    for task in tasks:
        keys |= task.heldout_keys
    return frozenset(keys)
