"""Realistic interaction logs for the arith world, in tutord's ingest format (JSON lines).

Each record is one user question from a task family and one assistant reply, with the
reference answer, the task label and, sometimes, the user's feedback:

    {"id", "timestamp", "messages": [{"role": "user", ...}, {"role": "assistant", ...}],
     "task", "reference", "feedback"?: {"rating": -1|0|1, "correction"?: str},
     "metadata": {"world": "arith", "correct": bool}}

The mix (`LogMix`) is like real traffic: most records are BARE (right or wrong answers with
no feedback and no reference: for them the self-judge is the only signal), some are rated
(a thumbs up on a right answer, a thumbs down on a wrong one) and a few corrected (a thumbs
down and the right answer). Rated and corrected records carry the reference; bare ones
do not (`LogMix.bare_reference` gives them one too, for experiments with an oracle). Replies
vary in style ("7", "The answer is 7.", "3+4=7"); wrong values are near misses. The same
seed gives the same records. Questions come from the train side of the split unless told
otherwise, so held-out prompts stay unseen. It does not read or write files (the CLI does).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from world.config import WorldConfig
from world.split import Split
from world.tasks import Problem, TaskFamily, get_family

DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)

_RIGHT_STYLES = (
    "{c}",
    "The answer is {c}.",
    "{a} {sym} {b} = {c}",
    "{a}{sym}{b}={c}",
    "It is {c}.",
)
# Half of the corrections are worked equations ("3+4=7"), the reply a tiny model learns best.
_CORRECTIONS = (
    "{a}{sym}{b}={c}",
    "{a}{sym}{b}={c}",
    "{a}{sym}{b}={c}",
    "{c}",
    "The answer is {c}.",
    "It should be {c}.",
)


@dataclass(frozen=True)
class LogMix:
    """Relative weights of the kinds of record (they need not sum to 1)."""

    right_thumbs_up: float = 0.1
    wrong_thumbs_down: float = 0.1
    wrong_corrected: float = 0.1
    right_no_feedback: float = 0.35
    wrong_no_feedback: float = 0.35
    bare_reference: bool = False
    """Give records without feedback a reference too (an oracle real traffic lacks)."""

    def kinds(self) -> tuple[tuple[str, ...], tuple[float, ...]]:
        names = (
            "right_thumbs_up",
            "wrong_thumbs_down",
            "wrong_corrected",
            "right_no_feedback",
            "wrong_no_feedback",
        )
        weights = tuple(float(getattr(self, name)) for name in names)
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("log mix weights must be non-negative and not all zero")
        return names, weights


def wrong_value(family: TaskFamily, problem: Problem, rng: random.Random) -> int:
    """A plausible wrong result: off by one or two, off by ten, or the digits swapped."""
    right = int(problem.answer)
    candidates = {right + d for d in (-2, -1, 1, 2, 10, -10)}
    swapped = str(abs(right))[::-1]
    if len(swapped) > 1:
        candidates.add(int(swapped) * (1 if right >= 0 else -1))
    candidates.discard(right)
    if family.b_at_most_a:  # subtraction traffic rarely goes negative
        candidates = {c for c in candidates if c >= 0} or {right + 1}
    return rng.choice(sorted(candidates))


def _reply(family: TaskFamily, problem: Problem, value: int, rng: random.Random) -> str:
    style = rng.choice(_RIGHT_STYLES)
    return style.format(a=problem.a, b=problem.b, sym=family.symbol, c=value)


def iter_logs(
    task: str,
    n: int,
    *,
    seed: int = 0,
    config: WorldConfig | None = None,
    mix: LogMix | None = None,
    split: Split | None = "train",
    start: datetime = DEFAULT_START,
) -> Iterator[dict[str, Any]]:
    """`n` interaction records of family `task`, deterministic under `seed`.

    Timestamps start at `start` plus the family's release step in days, about a minute
    apart.
    """
    config = config or WorldConfig()
    family = get_family(task, config)
    names, weights = (mix or LogMix()).kinds()
    rng = random.Random(f"logs:{task}:{seed}")
    problems = family.sample_problems(n, seed=seed, split=split)
    clock = start + timedelta(days=config.release.get(task, 0))
    for i, problem in enumerate(problems):
        kind = rng.choices(names, weights)[0]
        correct = kind.startswith("right")
        value = int(problem.answer) if correct else wrong_value(family, problem, rng)
        record: dict[str, Any] = {
            "id": f"arith-{task}-{seed}-{i:06d}",
            "timestamp": clock.isoformat().replace("+00:00", "Z"),
            "messages": [
                {"role": "user", "content": problem.prompt},
                {"role": "assistant", "content": _reply(family, problem, value, rng)},
            ],
            "task": task,
            "reference": problem.answer,
            "metadata": {"world": "arith", "correct": correct},
        }
        if kind.endswith("no_feedback") and not (mix or LogMix()).bare_reference:
            del record["reference"]
        if kind.endswith("thumbs_up"):
            record["feedback"] = {"rating": 1}
        elif kind.endswith("thumbs_down"):
            record["feedback"] = {"rating": -1}
        elif kind == "wrong_corrected":
            style = rng.choice(_CORRECTIONS)
            correction = style.format(a=problem.a, b=problem.b, sym=family.symbol, c=problem.answer)
            record["feedback"] = {"rating": -1, "correction": correction}
        yield record
        clock += timedelta(seconds=30 + rng.randrange(60))


def generate_logs(task: str, n: int, *, seed: int = 0, **kwargs: Any) -> list[dict[str, Any]]:
    """`iter_logs` as a list."""
    return list(iter_logs(task, n, seed=seed, **kwargs))


def write_jsonl(records: Iterable[dict[str, Any]], stream: IO[str]) -> int:
    """Write one compact JSON object per line; return how many."""
    count = 0
    for record in records:
        stream.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
    return count
