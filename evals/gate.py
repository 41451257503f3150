"""The regression gate's decision: paired, per-task comparison of two evaluation runs.

`gate(production, candidate, rules)` pairs the two runs' per-item scores on the items both
have, task by task, and computes

- the delta of the means (candidate - production),
- a paired bootstrap confidence interval of that delta (items resampled with replacement,
  `rules.resamples` times, seeded; percentile interval), and
- an exact two-sided McNemar test on the discordant pairs: under "no difference", an item
  the two policies disagree on is equally likely to favour either, so the count favouring
  the candidate is Binomial(discordant, 1/2). For scores that are not 0/1 it is the same
  exact sign test on the items whose scores differ.

A task REGRESSES when the candidate is worse by more than `rules.tolerance` (delta <
-tolerance) and the test's p-value is below `rules.alpha`; it GAINS when delta >
`rules.min_gain` and p < alpha. The candidate passes when no task regresses and, with
`rules.require_gain`, every task in `rules.target_tasks` gains (with no target tasks listed:
at least one task gains). A task the candidate lacks, or one with no items in common, fails
the gate.

Each task also reports the smallest drop its items could detect (`detectable_drop`: 80%
power at `rules.alpha`, from the number of items and the discordance seen, by the normal
approximation of McNemar's test, Connor 1987). When that is larger than the tolerance and
the task neither regressed nor gained, the gate CANNOT TELL whether it regressed; with
`rules.block_unseen` (the default) such silence does not count as "no regression" and the
candidate is not promoted. Everything is pure maths on plain numbers: no model, no lm-eval,
no I/O.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from evals.evaluation import Evaluation


@dataclass(frozen=True)
class GateRules:
    """What counts as a regression and what a promotion needs.

    tolerance: a drop of the mean larger than this can be a regression (absolute, 0.02 = 2
        points of exact match).
    alpha: significance level of the paired test (two-sided exact McNemar / sign test).
    target_tasks: tasks the cycle meant to improve.
    require_gain: promote only with a significant gain on every target task (on at least
        one task when `target_tasks` is empty).
    min_gain: the mean must rise by more than this for a gain.
    tasks: the tasks gated (None: every task of the production run).
    resamples: paired bootstrap resamples for the confidence interval.
    confidence: the interval's coverage.
    seed: the bootstrap's seed (each task mixes in a hash of its name).
    """

    tolerance: float = 0.02
    alpha: float = 0.05
    target_tasks: tuple[str, ...] = ()
    require_gain: bool = False
    min_gain: float = 0.0
    tasks: tuple[str, ...] | None = None
    resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0
    power: float = 0.8
    block_unseen: bool = True

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.resamples < 1:
            raise ValueError(f"resamples must be >= 1, got {self.resamples}")
        object.__setattr__(self, "target_tasks", tuple(self.target_tasks))
        if self.tasks is not None:
            object.__setattr__(self, "tasks", tuple(self.tasks))


@dataclass(frozen=True)
class TaskComparison:
    """One task's paired comparison.

    n: items scored by both runs (the pairs).
    production / candidate: the two means over those n items.
    delta: candidate - production.
    ci_low / ci_high: the paired bootstrap interval of delta.
    p_value: the exact two-sided McNemar (sign test) p-value.
    improved / worsened: items where the candidate scores higher / lower.
    regression / gain: the rules' verdicts.
    detectable_drop: the smallest drop these items detect with the rules' power at alpha.
    cannot_tell: neither regression nor gain, and `detectable_drop` > the tolerance.
    missing: why the task could not be compared (then n is 0 and it fails the gate).
    """

    task: str
    n: int
    production: float
    candidate: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    improved: int
    worsened: int
    regression: bool
    gain: bool
    missing: str | None = None
    detectable_drop: float = 1.0
    cannot_tell: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "n": self.n,
            "production": self.production,
            "candidate": self.candidate,
            "delta": self.delta,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "p_value": self.p_value,
            "improved": self.improved,
            "worsened": self.worsened,
            "regression": self.regression,
            "gain": self.gain,
            "missing": self.missing,
            "detectable_drop": self.detectable_drop,
            "cannot_tell": self.cannot_tell,
        }


@dataclass(frozen=True)
class GateResult:
    """The decision: passed, one sentence saying why (naming the tasks), and the per-task
    comparisons in the gated order."""

    passed: bool
    reason: str
    tasks: tuple[TaskComparison, ...]
    rules: GateRules = field(default_factory=GateRules)

    def task(self, name: str) -> TaskComparison:
        for t in self.tasks:
            if t.task == name:
                return t
        raise KeyError(name)

    @property
    def regressions(self) -> tuple[str, ...]:
        return tuple(t.task for t in self.tasks if t.regression or t.missing)

    @property
    def gains(self) -> tuple[str, ...]:
        return tuple(t.task for t in self.tasks if t.gain)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "tasks": {t.task: t.to_dict() for t in self.tasks},
            "rules": {
                "tolerance": self.rules.tolerance,
                "alpha": self.rules.alpha,
                "target_tasks": list(self.rules.target_tasks),
                "require_gain": self.rules.require_gain,
                "min_gain": self.rules.min_gain,
                "tasks": None if self.rules.tasks is None else list(self.rules.tasks),
                "resamples": self.rules.resamples,
                "confidence": self.rules.confidence,
                "seed": self.rules.seed,
                "power": self.rules.power,
                "block_unseen": self.rules.block_unseen,
            },
        }


def detectable_drop(n: int, discordant: int, alpha: float, power: float = 0.8) -> float:
    """The smallest drop of a 0/1 mean that a two-sided McNemar test at `alpha` detects with
    `power` over `n` paired items, given the discordant pairs seen (a drop of d needs at
    least a share d of discordant items, so the discordance used is at least d).

    >>> round(detectable_drop(100, 0, 0.05), 3), round(detectable_drop(100, 20, 0.05), 3)
    (0.077, 0.124)
    >>> detectable_drop(400, 0, 0.05) < 0.02 < detectable_drop(100, 0, 0.05)
    True
    """
    if n <= 0:
        return 1.0
    z_alpha = NormalDist().inv_cdf(1 - alpha / 2)
    z_power = NormalDist().inv_cdf(power)
    seen = discordant / n

    def needed(drop: float) -> float:
        share = max(seen, drop)
        spread = math.sqrt(max(share - drop * drop, 0.0))
        return (z_alpha * math.sqrt(share) + z_power * spread) ** 2 / (drop * drop)

    if needed(1.0) > n:
        return 1.0
    low, high = 1e-6, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if needed(middle) <= n:
            high = middle
        else:
            low = middle
    return high


def mcnemar_exact(worse: int, better: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts: twice the smaller
    binomial tail of Binomial(worse + better, 1/2), capped at 1.

    >>> mcnemar_exact(0, 0)
    1.0
    >>> round(mcnemar_exact(0, 6), 6)
    0.03125
    >>> round(mcnemar_exact(3, 5), 6)
    0.726562
    """
    if worse < 0 or better < 0:
        raise ValueError("counts must be >= 0")
    n = worse + better
    if n == 0:
        return 1.0
    k = min(worse, better)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_bootstrap_ci(
    production: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of mean(candidate - production) over paired resamples of the
    items (the same resampled items for both policies).

    >>> paired_bootstrap_ci([1, 0, 1], [1, 0, 1])
    (0.0, 0.0)
    """
    prod = np.asarray(production, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if prod.shape != cand.shape or prod.ndim != 1:
        raise ValueError("production and candidate need the same 1-d shape")
    n = prod.size
    if n == 0:
        return (math.nan, math.nan)
    diff = cand - prod
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 4_000_000 // n)  # keep the index matrix small
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return (float(low), float(high))


def _missing(task: str, why: str) -> TaskComparison:
    nan = math.nan
    return TaskComparison(
        task, 0, nan, nan, nan, nan, nan, 1.0, 0, 0, regression=False, gain=False, missing=why
    )


def compare_task(
    task: str,
    production: Mapping[str, float],
    candidate: Mapping[str, float],
    rules: GateRules,
) -> TaskComparison:
    """The paired comparison of one task's per-item scores (item id -> score)."""
    common = [k for k in production if k in candidate]
    if not common:
        return _missing(task, "no items in common")
    prod = np.array([production[k] for k in common], dtype=np.float64)
    cand = np.array([candidate[k] for k in common], dtype=np.float64)
    worsened = int(np.sum(cand < prod))
    improved = int(np.sum(cand > prod))
    p_value = mcnemar_exact(worsened, improved)
    delta = float(cand.mean() - prod.mean())
    seed = (rules.seed * 1_000_003 + zlib.crc32(task.encode("utf-8"))) % 2**32
    low, high = paired_bootstrap_ci(
        prod, cand, resamples=rules.resamples, confidence=rules.confidence, seed=seed
    )
    significant = p_value < rules.alpha
    regression = bool(delta < -rules.tolerance and significant)
    gain = bool(delta > rules.min_gain and significant)
    drop = detectable_drop(len(common), worsened + improved, rules.alpha, rules.power)
    return TaskComparison(
        task=task,
        n=len(common),
        production=float(prod.mean()),
        candidate=float(cand.mean()),
        delta=delta,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        improved=improved,
        worsened=worsened,
        regression=regression,
        gain=gain,
        detectable_drop=round(drop, 4),
        cannot_tell=bool(not regression and not gain and drop > rules.tolerance),
    )


def _fmt_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _describe(t: TaskComparison) -> str:
    return (
        f"{t.task} ({t.production:.3f} -> {t.candidate:.3f}, {t.delta:+.3f}, {_fmt_p(t.p_value)})"
    )


def _power(comparisons: Sequence[TaskComparison]) -> str:
    """What the gate could see: the smallest detectable drop per task."""
    drops = ", ".join(f"{t.task} {t.detectable_drop:.3f}" for t in comparisons)
    return f"smallest drops it could detect: {drops}"


def _join(parts: Sequence[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def compare(
    production: Mapping[str, Mapping[str, float]],
    candidate: Mapping[str, Mapping[str, float]],
    rules: GateRules | None = None,
) -> GateResult:
    """The gate on plain per-item scores: task -> (item id -> score) for each policy."""
    rules = rules or GateRules()
    names = list(rules.tasks) if rules.tasks is not None else list(production)
    for target in rules.target_tasks:
        if target not in names:
            names.append(target)
    comparisons: list[TaskComparison] = []
    for name in names:
        if name not in production or name not in candidate:
            side = "production" if name not in production else "candidate"
            comparisons.append(_missing(name, f"no {side} results"))
            continue
        comparisons.append(compare_task(name, production[name], candidate[name], rules))

    if not comparisons:
        return GateResult(False, "no tasks to compare.", (), rules)
    missing = [t for t in comparisons if t.missing]
    regressed = [t for t in comparisons if t.regression]
    if missing or regressed:
        parts = [f"{t.task} ({t.missing})" for t in missing]
        parts += [_describe(t) for t in regressed]
        noun = "regression" if not missing else "failure"
        return GateResult(False, f"{noun} on {_join(parts)}.", tuple(comparisons), rules)
    unseen = [t for t in comparisons if t.cannot_tell]
    if unseen and rules.block_unseen:
        parts = [
            f"{t.task} ({t.n} items detect a drop of {t.detectable_drop:.3f} at best, "
            f"tolerance {rules.tolerance:.3f})"
            for t in unseen
        ]
        return GateResult(
            False, f"cannot tell whether {_join(parts)} regressed.", tuple(comparisons), rules
        )

    if rules.require_gain:
        targets = [t for t in comparisons if t.task in rules.target_tasks]
        if targets:
            lacking = [t for t in targets if not t.gain]
            if lacking:
                return GateResult(
                    False,
                    "no significant gain on target task"
                    f"{'s' if len(lacking) > 1 else ''} {_join([_describe(t) for t in lacking])}.",
                    tuple(comparisons),
                    rules,
                )
            gained = targets
        else:
            gained = [t for t in comparisons if t.gain]
            if not gained:
                return GateResult(
                    False,
                    "no significant gain on any task "
                    f"({_join([_describe(t) for t in comparisons])}).",
                    tuple(comparisons),
                    rules,
                )
        reason = (
            f"no regression on {_join([t.task for t in comparisons])}; significant gain on "
            f"{_join([_describe(t) for t in gained])}; {_power(comparisons)}."
        )
        return GateResult(True, reason, tuple(comparisons), rules)

    gained = [t for t in comparisons if t.gain]
    reason = f"no regression on {_join([t.task for t in comparisons])}"
    if gained:
        reason += f"; significant gain on {_join([_describe(t) for t in gained])}"
    return GateResult(True, f"{reason}; {_power(comparisons)}.", tuple(comparisons), rules)


def gate(
    production: Evaluation, candidate: Evaluation, rules: GateRules | None = None
) -> GateResult:
    """Decide whether `candidate` may replace `production` (see the module docstring).

    The runs must come from the same suite (same suite hash); items are paired by id."""
    if production.suite_hash != candidate.suite_hash:
        raise ValueError(
            f"runs of different suites ({production.suite_hash[:12]} vs "
            f"{candidate.suite_hash[:12]}): the gate pairs items of one suite"
        )
    return compare(
        {name: t.items for name, t in production.tasks.items()},
        {name: t.items for name, t in candidate.tasks.items()},
        rules,
    )


def anchored(
    result: GateResult, base: Evaluation, candidate: Evaluation, tasks: Sequence[str]
) -> GateResult:
    """`result` (the candidate against production) held to the base model too on `tasks`
    (suite task names): the same rules, no gain asked for, items paired by id (the base's
    run may come from a suite of those tasks alone). A regression against the base, or a
    "cannot tell", fails the candidate, so that losses within the tolerance cannot add up
    over promotions. The per-task comparisons stay production's; the reason names the base."""
    rules = replace(result.rules, tasks=tuple(tasks), target_tasks=(), require_gain=False)
    against = compare(
        {name: base.tasks[name].items for name in tasks if name in base.tasks},
        {name: candidate.tasks[name].items for name in tasks if name in candidate.tasks},
        rules,
    )
    if against.passed:
        if not result.passed:
            return result
        reason = f"{result.reason[:-1]}; against the base model: {against.reason}"
        return GateResult(True, reason, result.tasks, result.rules)
    reason = f"against the base model: {against.reason}"
    if not result.passed:
        reason += f" Against production: {result.reason}"
    return GateResult(False, reason, result.tasks, result.rules)
