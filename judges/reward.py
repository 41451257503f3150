"""A composite reward: weighted verifiers and judges, with every component's score kept.

Each component is a scorer with the shared call shape
`(prompts, completions, **columns) -> list[float | None]`. Per row, the reward is the
weighted mean of the components that did not abstain (weights renormalized over
them); a row where every component abstains gets None. It is itself such a scorer,
so it plugs into TRL's GRPOTrainer as a reward function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Scorer = Callable[..., list[float | None]]


@dataclass(frozen=True)
class Component:
    """One scorer in a composite, with its weight (> 0) and the name its scores go under."""

    name: str
    scorer: Scorer
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"component {self.name!r}: weight must be > 0, got {self.weight}")


class CompositeReward:
    """Weighted combination of scorers.

    >>> always_one = lambda prompts, completions, **kw: [1.0] * len(completions)
    >>> abstain_2nd = lambda prompts, completions, **kw: [0.0, None]
    >>> r = CompositeReward([Component("a", always_one, 3.0), Component("b", abstain_2nd, 1.0)])
    >>> r(["p", "p"], ["x", "y"])
    [0.75, 1.0]
    >>> r.last_breakdown
    {'a': [1.0, 1.0], 'b': [0.0, None]}
    """

    def __init__(self, components: Sequence[Component], name: str = "composite") -> None:
        if not components:
            raise ValueError("a composite reward needs at least one component")
        names = [c.name for c in components]
        if len(set(names)) != len(names):
            raise ValueError(f"component names must be unique: {names}")
        self.components = list(components)
        self.__name__ = name  # TRL logs reward functions by __name__
        self.last_breakdown: dict[str, list[float | None]] = {}

    def breakdown(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
    ) -> dict[str, list[float | None]]:
        """Every component's scores, by name."""
        out: dict[str, list[float | None]] = {}
        for c in self.components:
            scores = list(c.scorer(prompts, completions, **columns))
            if len(scores) != len(completions):
                raise ValueError(f"component {c.name!r} returned {len(scores)} scores")
            out[c.name] = scores
        return out

    def combine(self, breakdown: dict[str, list[float | None]]) -> list[float | None]:
        n = len(next(iter(breakdown.values())))
        combined: list[float | None] = []
        for i in range(n):
            total = weight = 0.0
            for c in self.components:
                score = breakdown[c.name][i]
                if score is not None:
                    total += c.weight * score
                    weight += c.weight
            combined.append(total / weight if weight else None)
        return combined

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
    ) -> list[float | None]:
        self.last_breakdown = self.breakdown(prompts, completions, **columns)
        return self.combine(self.last_breakdown)
