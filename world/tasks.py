"""The arith world's task families (add, sub, mul): prompts, reference answers, verifier.

A `TaskFamily` is a plain frozen record: its operation, operand ranges, the phrasings of its
questions and of its plain-text statements (for the pretraining corpus), and the shared
integer verifier. It enumerates or samples `Problem`s deterministically under a seed and
can restrict them to one side of the stable train/held-out split. It does not generate
logs, corpora or models (see `logs`, `corpus`, `pretrain`).
"""

from __future__ import annotations

import logging
import operator
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from world.config import WorldConfig
from world.split import Split, split_of
from world.verify import verify_integer

log = logging.getLogger(__name__)

Verifier = Callable[..., list[float | None]]


@dataclass(frozen=True, slots=True)
class Problem:
    """One question of a family: operands, the rendered prompt and its reference answer."""

    family: str
    a: int
    b: int
    phrasing: int
    prompt: str
    answer: str
    worked: str
    """The answer as its equation, e.g. '3+4=7': the easiest reply for a model pretrained on
    equations to learn (it copies the operands, then completes the equation)."""

    @property
    def split(self) -> Split:
        return split_of(self.prompt)

    def messages(self) -> list[dict[str, str]]:
        """The prompt as a one-turn chat."""
        return [{"role": "user", "content": self.prompt}]


@dataclass(frozen=True)
class TaskFamily:
    """One operation, its operand ranges and its phrasings. No subclasses: families differ
    only in data."""

    name: str
    symbol: str
    op: Callable[[int, int], int]
    a_max: int
    b_max: int
    phrasings: tuple[str, ...]
    """Question templates with `{a}` and `{b}`, `{a}` named first: the reply's equation
    copies the operands in the order the question gives them. (Phrasings that name them in
    reverse, such as "Subtract {b} from {a}.", stayed near 0.1 held-out exact match after the
    demo's cycles while the other phrasings passed 0.9: a model this small does not learn to
    swap them from the traffic it gets.)"""
    statements: tuple[str, ...]
    """Plain-text fact templates with `{a}`, `{b}`, `{c}` (the result), for pretraining."""
    b_at_most_a: bool = False
    """Subtraction: keep the result non-negative."""
    verify: Verifier = verify_integer
    """`(prompts, completions, **columns) -> list[float | None]`; reads `reference`."""

    def answer(self, a: int, b: int) -> str:
        """The reference answer: the result as an integer in text."""
        return str(self.op(a, b))

    @cached_property
    def operand_pairs(self) -> tuple[tuple[int, int], ...]:
        """Every (a, b) the family can ask about, in order."""
        return tuple(
            (a, b)
            for a in range(self.a_max + 1)
            for b in range(self.b_max + 1)
            if not (self.b_at_most_a and b > a)
        )

    def problem(self, a: int, b: int, phrasing: int = 0) -> Problem:
        """The problem (a, b) in the given phrasing."""
        prompt = self.phrasings[phrasing].format(a=a, b=b)
        answer = self.answer(a, b)
        worked = f"{a}{self.symbol}{b}={answer}"
        return Problem(self.name, a, b, phrasing, prompt, answer, worked)

    def statement(self, a: int, b: int, form: int) -> str:
        """A plain-text fact such as '3+4=7' or '3 plus 4 is 7.'."""
        return self.statements[form].format(a=a, b=b, c=self.op(a, b))

    def all_problems(self, split: Split | None = None) -> list[Problem]:
        """Every (pair, phrasing) problem, optionally only one side of the split."""
        out = [
            self.problem(a, b, k) for a, b in self.operand_pairs for k in range(len(self.phrasings))
        ]
        return out if split is None else [p for p in out if p.split == split]

    def sample(self, rng: random.Random) -> Problem:
        """One problem drawn uniformly over pairs and phrasings."""
        a, b = rng.choice(self.operand_pairs)
        return self.problem(a, b, rng.randrange(len(self.phrasings)))

    def sample_problems(
        self, n: int, seed: int = 0, split: Split | None = "train", unique: bool = False
    ) -> list[Problem]:
        """`n` problems, deterministic under `seed`, from one side of the split (or both).

        With `unique`, no prompt repeats; fewer than `n` come back when fewer exist.
        """
        rng = random.Random(f"{self.name}:{seed}")
        if unique:
            pool = self.all_problems(split)
            rng.shuffle(pool)
            if len(pool) < n:
                log.warning("%s has only %d distinct %s prompts", self.name, len(pool), split)
            return pool[:n]
        out: list[Problem] = []
        while len(out) < n:
            problem = self.sample(rng)
            if split is None or problem.split == split:
                out.append(problem)
        return out

    def score(self, completions: list[Any], problems: list[Problem]) -> list[float | None]:
        """The verifier applied to completions of `problems`."""
        return self.verify(
            [p.prompt for p in problems], completions, reference=[p.answer for p in problems]
        )


def _families(config: WorldConfig) -> dict[str, TaskFamily]:
    add = TaskFamily(
        name="add",
        symbol="+",
        op=operator.add,
        a_max=config.add_max,
        b_max=config.add_max,
        phrasings=(
            "What is {a}+{b}?",
            "Compute {a} plus {b}.",
            "{a} + {b} = ?",
            "What is the sum of {a} and {b}?",
            "Add {a} and {b}.",
            "How much is {a} plus {b}?",
            "What do you get when you add {a} and {b}?",
            "Find {a} + {b}.",
            "Calculate {a} plus {b}.",
            "What is {a} plus {b}?",
        ),
        statements=(
            "{a}+{b}={c}",
            "{a} + {b} = {c}",
            "{a} plus {b} is {c}.",
            "The sum of {a} and {b} is {c}.",
        ),
    )
    sub = TaskFamily(
        name="sub",
        symbol="-",
        op=operator.sub,
        a_max=config.sub_max,
        b_max=config.sub_max,
        b_at_most_a=True,
        phrasings=(
            "What is {a}-{b}?",
            "Compute {a} minus {b}.",
            "{a} - {b} = ?",
            "What is the difference of {a} and {b}?",
            "From {a}, subtract {b}.",
            "How much is {a} minus {b}?",
            "What is left when you take {a} and remove {b}?",
            "Find {a} - {b}.",
            "Calculate {a} minus {b}.",
            "What is {a} minus {b}?",
        ),
        statements=(
            "{a}-{b}={c}",
            "{a} - {b} = {c}",
            "{a} minus {b} is {c}.",
            "The difference of {a} and {b} is {c}.",
        ),
    )
    mul = TaskFamily(
        name="mul",
        symbol="*",
        op=operator.mul,
        a_max=config.mul_max,
        b_max=config.mul_max,
        phrasings=(
            "What is {a}*{b}?",
            "Compute {a} times {b}.",
            "{a} * {b} = ?",
            "What is the product of {a} and {b}?",
            "Multiply {a} by {b}.",
            "How much is {a} times {b}?",
            "What do you get when you multiply {a} by {b}?",
            "Find {a} * {b}.",
            "Calculate {a} times {b}.",
            "What is {a} times {b}?",
        ),
        statements=(
            "{a}*{b}={c}",
            "{a} * {b} = {c}",
            "{a} times {b} is {c}.",
            "The product of {a} and {b} is {c}.",
        ),
    )
    return {f.name: f for f in (add, sub, mul)}


def families(config: WorldConfig | None = None) -> dict[str, TaskFamily]:
    """The task families under `config` (default ranges: add/sub 0..20, mul 0..12)."""
    return _families(config or WorldConfig())


def get_family(name: str, config: WorldConfig | None = None) -> TaskFamily:
    """One family by name; KeyError names the known ones."""
    known = families(config)
    if name not in known:
        raise KeyError(f"unknown task family {name!r}; known: {', '.join(known)}")
    return known[name]


DIFFERENT_BY = (-10, -2, -1, 1, 2, 10)
"""How far the second number of a `different` comparison line often is from the first."""


def compare_line(x: int, y: int | None) -> str:
    """A comparison of two written numbers (None: no number), as the pretraining corpus
    states them and the world's self-judge concludes its verdicts (`world.pack`).

    >>> compare_line(32, 32), compare_line(32, 23), compare_line(7, None)
    ('32 vs 32: same.', '32 vs 23: different.', '7 vs none: different.')
    """
    shown = "none" if y is None else str(y)
    return f"{x} vs {shown}: {'same' if x == y else 'different'}."
