"""Self-rewarded synthesis: prompts in, scored candidates, SFT examples and preference pairs out.

For each prompt the policy writes K candidates (temperature > 0); each candidate is
scored by the prompt's verifier (when it has a reference) and by the judge; the scores
combine into one reward. SFT examples are candidates at or above a threshold;
preference pairs are best versus worst with at least a minimum margin (ties dropped).
User feedback becomes data in `judges/feedback.py`. Candidates a grader scored, outside the
judge's held-out prompts, are returned as `known` answers for judge training
(`judges/judge_training.py`). Judge health (agreement with verifiers on the judge's
held-out prompts, length bias, abstentions) is computed on every run. A pair whose order
the verifiers do not decide (no verifier score on a side, or equal scores) is
JUDGE-DECIDED and is labelled so; like an SFT example whose reward rests on the judge
alone, it is made only while judge health is at or above the floor.

Everything here is a typed, frozen record; nothing is stored (see `daemon/synth_run.py`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import annotated_types as at

from judges.judge_training import KnownAnswer, in_judge_holdout
from judges.llm_judge import PointwiseJudge
from judges.verifiers import normalize
from stages.configs import (
    Count,
    NonNegativeInt,
    Positive,
    Share,
    check_bounds,
    per_run,
)
from stages.generate.api import AdapterRef, Chat, GenerationBackend, SamplingParams

log = logging.getLogger(__name__)

Scorer = Callable[..., list[float | None]]


@dataclass(frozen=True)
class PromptItem:
    """A prompt to synthesize from, with what is known about it."""

    prompt: Chat
    task: str | None = None
    reference: str | None = None
    origin: str = "pool"  # interaction | pool | self-instruct
    interaction_id: int | None = None

    @property
    def key(self) -> str:
        return prompt_hash(self.prompt)


@dataclass(frozen=True)
class SynthConfig:
    """The knobs of synthesis (see the README's synthesis section): `tutord.toml`'s
    `[synth]` table is validated against this class, and a run gets it with its seed set."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    prompts: Count = 64
    """Prompts per synthesis run."""
    n: Annotated[int, at.Ge(2)] = 4
    """Candidates per prompt."""
    temperature: Positive = 0.8
    """Sampling temperature of the candidates."""
    top_p: Annotated[float, at.Interval(gt=0, le=1)] = 1.0
    """Nucleus sampling of the candidates (1: off)."""
    max_new_tokens: Count = 24
    """Longest candidate in tokens."""
    seed: int = per_run(0, "the run's --seed or the cycle's seed")
    """Random seed of the run (generation and judging)."""
    sft_threshold: Share = 0.8
    """Candidates whose combined reward (in [0, 1]) is at least this become SFT examples."""
    pair_margin: Share = 0.3
    """Best and worst candidate of a prompt become a preference pair when their rewards
    differ by at least this."""
    verifier_weight: Positive = 1.0
    """Weight of the verifier's score in the combined reward."""
    judge_weight: Positive = 0.5
    """Weight of the judge's score in the combined reward."""
    agreement_floor: Share = 0.6
    """When the judge's balanced agreement with the verifiers (the mean of the shares of
    right answers it passes and of wrong answers it fails; plain agreement when only one
    kind was measured) is below this, no pair that only the judge decided is produced."""
    min_agreement_rows: NonNegativeInt = 5
    """Verifiable candidates needed to measure that agreement (fewer: no judge-only pairs)."""
    interaction_share: Share = 0.5
    """Share of prompts taken from recent interactions."""
    recent_interactions: NonNegativeInt = 2000
    """How many of the newest interactions count as recent."""
    self_instruct: NonNegativeInt = 0
    """New prompts the policy writes per run (Self-Instruct)."""
    default_verifier: Literal["numeric", "exact", "normalized", "math", "none"] = "numeric"
    """Verifier for prompts with a reference whose task has none of its own."""
    judge_share: Annotated[float, at.Interval(ge=0, lt=1)] = 0.2
    """Share of a run's SFT examples that are judge-training examples made from answers of
    known quality (graded candidates, ratings, corrections); 0: the judge is not trained."""
    judge_holdout_percent: Annotated[int, at.Interval(ge=0, le=100)] = 30
    """Prompts (by a stable hash) whose candidates never become judge-training examples;
    judge health is measured on them (0: on every verifiable candidate)."""

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class Candidate:
    """One generated answer with every score it got and the combined reward."""

    prompt_index: int
    index: int
    completion: str
    scores: Mapping[str, float | None]
    reward: float | None
    judge_raw: tuple[str, ...] = ()


@dataclass(frozen=True)
class SFTItem:
    prompt: Chat
    completion: str
    task: str | None
    reward: float | None
    origin: str  # synth | feedback
    prompt_index: int | None = None
    candidate_index: int | None = None
    interaction_id: int | None = None


@dataclass(frozen=True)
class Pair:
    prompt: Chat
    chosen: str
    rejected: str
    task: str | None
    margin: float | None
    origin: str  # synth | feedback
    judge_decided: bool = False
    """The verifiers did not order the two answers (a side unscored, or equal scores)."""
    prompt_index: int | None = None
    chosen_index: int | None = None
    rejected_index: int | None = None
    interaction_id: int | None = None


@dataclass(frozen=True)
class JudgeHealth:
    """How far the judge can be trusted on this run."""

    judged: int
    abstentions: int
    agreement: float | None  # share of verifiable candidates where judge and verifier agree
    agreement_rows: int
    length_correlation: float | None  # Pearson r of judge score with completion length
    floor: float
    ok: bool
    message: str
    passes_right: float | None = None
    """Share of the verifiably right candidates the judge passed (its sensitivity)."""
    fails_wrong: float | None = None
    """Share of the verifiably wrong candidates the judge failed (its specificity). A judge
    that passes everything agrees often when most answers are right, and fails none."""
    balanced: float | None = None
    """Mean of `passes_right` and `fails_wrong`, when both kinds were measured: the
    agreement the floor is held to, since the base rate of right answers cannot raise it."""

    @property
    def abstention_rate(self) -> float:
        return self.abstentions / self.judged if self.judged else 0.0


@dataclass(frozen=True)
class SynthResult:
    prompts: list[PromptItem]
    candidates: list[Candidate]
    sft: list[SFTItem]
    pairs: list[Pair]
    health: JudgeHealth
    dropped_ties: int
    counts: dict[str, int] = field(default_factory=dict)
    known: list[KnownAnswer] = field(default_factory=list)
    """Graded candidates outside the judge's held-out prompts: judge-training material."""


def prompt_hash(prompt: Chat) -> str:
    """A stable identity for a prompt (roles and normalized contents)."""
    text = "\n".join(f"{m['role']}:{normalize(m['content'])}" for m in prompt)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation, None when undefined (fewer than 3 points or no variance).

    >>> pearson([1, 2, 3], [2, 4, 6])
    1.0
    >>> pearson([1, 1, 1], [1, 2, 3]) is None
    True
    """
    if len(xs) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return round(
        sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / math.sqrt(sxx * syy), 6
    )


def judge_health(
    candidates: Sequence[Candidate], config: SynthConfig, measured: set[int] | None = None
) -> JudgeHealth:
    """Agreement with verifiers (on the candidates of the prompts in `measured`, all when
    None), length bias and abstentions of the judge on a run."""
    judged = [c for c in candidates if "judge" in c.scores]
    abstained = sum(1 for c in judged if c.scores["judge"] is None)
    both = [
        (c.scores["judge"], c.scores["verifier"])
        for c in judged
        if c.scores["judge"] is not None
        and c.scores.get("verifier") is not None
        and (measured is None or c.prompt_index in measured)
    ]
    agreement = (
        sum(1 for j, v in both if (j >= 0.5) == (v >= 0.5)) / len(both) if both else None  # type: ignore[operator]
    )
    passes_right = _share([j >= 0.5 for j, v in both if v >= 0.5])  # type: ignore[operator]
    fails_wrong = _share([j < 0.5 for j, v in both if v < 0.5])  # type: ignore[operator]
    balanced = (
        None
        if passes_right is None or fails_wrong is None
        else round((passes_right + fails_wrong) / 2, 6)
    )
    held_to = balanced if balanced is not None else agreement
    scored = [
        (float(len(c.completion)), c.scores["judge"])
        for c in judged
        if c.scores["judge"] is not None
    ]
    length_r = pearson([x for x, _ in scored], [y for _, y in scored]) if scored else None  # type: ignore[misc]
    if not judged:
        ok, message = True, "no judge on this run"
    elif agreement is None or len(both) < config.min_agreement_rows:
        ok = False
        message = (
            f"judge agreement unknown ({len(both)} verifiable judged candidates, "
            f"need {config.min_agreement_rows}): no judge-decided pairs"
        )
    else:
        measured_on = f"agrees with verifiers on {agreement:.0%} of {len(both)}" + (
            ""
            if balanced is None
            else f" (passes {passes_right:.0%} of right answers, fails {fails_wrong:.0%} of "
            f"wrong ones: balanced {balanced:.0%})"
        )
        ok = held_to is not None and held_to >= config.agreement_floor
        message = (
            f"judge {measured_on}"
            if ok
            else f"JUDGE UNRELIABLE: {measured_on}, below the floor "
            f"{config.agreement_floor:.0%}: no judge-decided pairs"
        )
    return JudgeHealth(
        len(judged),
        abstained,
        agreement,
        len(both),
        length_r,
        config.agreement_floor,
        ok,
        message,
        passes_right,
        fails_wrong,
        balanced,
    )


def _share(flags: Sequence[bool]) -> float | None:
    """Share of True in `flags`, None when empty.

    >>> _share([True, False, True, True]), _share([])
    (0.75, None)
    """
    return round(sum(flags) / len(flags), 6) if flags else None


def judge_decided(best: Candidate, worst: Candidate) -> bool:
    """Whether only the judge ordered two candidates: the verifiers scored neither, one, or
    both equally."""
    a, b = best.scores.get("verifier"), worst.scores.get("verifier")
    return a is None or b is None or a == b


def _combine(scores: Mapping[str, float | None], config: SynthConfig) -> float | None:
    weights = {"verifier": config.verifier_weight, "judge": config.judge_weight}
    total = weight = 0.0
    for name, score in scores.items():
        if score is not None:
            total += weights.get(name, 1.0) * score
            weight += weights.get(name, 1.0)
    return total / weight if weight else None


def synthesize(
    prompts: Sequence[PromptItem],
    backend: GenerationBackend,
    *,
    adapter: AdapterRef | None,
    verifier_for: Callable[[str | None], Scorer | None],
    judge: PointwiseJudge | None,
    config: SynthConfig,
) -> SynthResult:
    """Generate, score and turn into SFT examples and pairs. Deterministic under `config.seed`
    for a deterministic backend."""
    prompts = list(prompts)
    params = SamplingParams(
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        n=config.n,
        seed=config.seed,
    )
    outputs = backend.generate([p.prompt for p in prompts], params, adapter) if prompts else []
    flat = [(i, j, text) for i, texts in enumerate(outputs) for j, text in enumerate(texts)]
    flat_prompts = [prompts[i].prompt for i, _, _ in flat]
    texts = [t for _, _, t in flat]

    verifier_scores: list[float | None] = [None] * len(flat)
    by_task: dict[str | None, list[int]] = {}
    for k, (i, _, _) in enumerate(flat):
        by_task.setdefault(prompts[i].task, []).append(k)
    for task, rows in by_task.items():
        verifier = verifier_for(task)
        if verifier is None:
            continue
        got = verifier(
            [flat_prompts[k] for k in rows],
            [texts[k] for k in rows],
            reference=[prompts[flat[k][0]].reference for k in rows],
        )
        for k, score in zip(rows, got, strict=True):
            verifier_scores[k] = score

    judge_scores: list[float | None] = []
    judge_raw: list[list[str]] = [[] for _ in flat]
    if judge is not None and flat:
        judge_scores = judge(flat_prompts, texts)
        assert judge.last is not None
        judge_raw = judge.last.raw

    candidates = []
    for k, (i, j, text) in enumerate(flat):
        scores: dict[str, float | None] = {"verifier": verifier_scores[k]}
        if judge is not None:
            scores["judge"] = judge_scores[k]
        candidates.append(
            Candidate(i, j, text, scores, _combine(scores, config), tuple(judge_raw[k]))
        )
    holdout = {
        i for i, p in enumerate(prompts) if in_judge_holdout(p.key, config.judge_holdout_percent)
    }
    health = judge_health(candidates, config, holdout or None)
    if not health.ok:
        log.info("synthesis: %s", health.message)  # callers show it (tutord synth, cycle)

    sft: list[SFTItem] = []
    pairs: list[Pair] = []
    ties = 0
    for i, item in enumerate(prompts):
        group = [c for c in candidates if c.prompt_index == i and c.reward is not None]
        seen: set[str] = set()
        for c in sorted(group, key=lambda c: (-c.reward, c.index)):  # type: ignore[operator]
            judge_alone = c.scores.get("verifier") is None
            if judge_alone and not health.ok:
                continue
            if c.reward >= config.sft_threshold and c.completion not in seen:  # type: ignore[operator]
                seen.add(c.completion)
                sft.append(
                    SFTItem(item.prompt, c.completion, item.task, c.reward, "synth", i, c.index)
                )
        if len(group) < 2:
            continue
        best = max(group, key=lambda c: (c.reward, -c.index))
        worst = min(group, key=lambda c: (c.reward, c.index))
        margin = best.reward - worst.reward  # type: ignore[operator]
        if margin < config.pair_margin or best.completion == worst.completion:
            ties += 1
            continue
        if judge_decided(best, worst) and not health.ok:
            continue
        pairs.append(
            Pair(
                item.prompt,
                best.completion,
                worst.completion,
                item.task,
                round(margin, 6),
                "synth",
                judge_decided(best, worst),
                i,
                best.index,
                worst.index,
            )
        )
    counts = {
        "prompts": len(prompts),
        "candidates": len(candidates),
        "sft": len(sft),
        "pairs": len(pairs),
        "ties_dropped": ties,
    }
    known = [
        KnownAnswer(
            prompts[c.prompt_index].prompt,
            c.completion,
            float(c.scores["verifier"]) >= 1.0,  # type: ignore[arg-type]
            prompts[c.prompt_index].task,
            "grader",
            c.prompt_index,
            c.index,
            prompts[c.prompt_index].interaction_id,
            prompts[c.prompt_index].reference,
        )
        for c in candidates
        if c.scores.get("verifier") is not None and c.prompt_index not in holdout
    ]
    return SynthResult(prompts, candidates, sft, pairs, health, ties, counts, known)


SELF_INSTRUCT_TEMPLATE = (
    "Here are some questions users asked:\n{examples}\nWrite one new question of the same kind. "
    "Reply with the question only."
)


def self_instruct(
    backend: GenerationBackend,
    adapter: AdapterRef | None,
    examples: Sequence[str],
    *,
    n: int,
    seed: int,
    known: set[str],
    shots: int = 4,
    max_new_tokens: int = 48,
) -> list[str]:
    """Up to `n` new prompts written by the policy from few-shot examples of real ones,
    deduplicated (normalized text) against `known` and each other."""
    if not examples or n <= 0:
        return []
    rng = random.Random(seed)
    requests = []
    for _ in range(n):
        chosen = rng.sample(list(examples), min(shots, len(examples)))
        listing = "\n".join(f"- {e}" for e in chosen)
        requests.append(
            [{"role": "user", "content": SELF_INSTRUCT_TEMPLATE.format(examples=listing)}]
        )
    params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, seed=seed)
    seen = {normalize(k) for k in known}
    out = []
    for (text,) in backend.generate(requests, params, adapter):
        candidate = text.strip().splitlines()[0].strip() if text.strip() else ""
        if len(candidate) < 3 or normalize(candidate) in seen:
            continue
        seen.add(normalize(candidate))
        out.append(candidate)
    return out
