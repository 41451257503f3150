"""Drift measurement: divergence between policies, and what one adapter version looked like.

- `divergence(base_model, adapter_a, adapter_b, probe)`: a per-token KL(A || B) estimate
  between two policies (the base, or base + a LoRA adapter) on a fixed probe set, from
  per-token log-probabilities (`stages.generate.hf.TransformersBackend.token_logprobs`).
  Estimator, exactly: every probe completion y (given, or sampled from A at temperature 1)
  is scored under both policies; for each of its tokens t (the end-of-turn token included),
  with log-ratio r_t = log pB(y_t | x, y_<t) - log pA(y_t | x, y_<t), the default "k3"
  estimator averages exp(r_t) - 1 - r_t over all tokens of all completions (Schulman's
  low-variance estimator: never negative, 0 exactly when the policies agree on every token,
  and, for tokens sampled from A, unbiased for the per-position KL(A || B) given the
  prefix); "k1" averages -r_t = log pA - log pB (the plain Monte-Carlo estimate of
  E_{y~A}[log pA(y) - log pB(y)] per token; unbiased too, but can come out negative).
  Both are "per token" (sum over tokens / number of tokens), in nats. With completions
  not drawn from A (e.g. fixed references) the number is a log-ratio on that data, not a
  KL estimate.
- `VersionDrift`: what one adapter version looked like (gate scores per task, response
  lengths, judge figures, divergence from base and from the previous version, traffic mix
  and feedback rates passed in as plain dicts, promotion / rollback events);
  `snapshot_from_run` fills one from an `evals.evaluation.Evaluation`.

It does not write or render the report (`evals.drift_report`, `evals.drift_charts`), reads
no database and does not decide promotions; the daemon gathers the inputs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from stages.generate.api import AdapterRef, Chat, SamplingParams

if TYPE_CHECKING:
    from evals.evaluation import Evaluation
    from stages.generate.hf import TransformersBackend

log = logging.getLogger(__name__)

Estimator = Literal["k1", "k3"]
ProbeItem = tuple[Chat, str | None]
"""A probe: the prompt as chat messages and a completion (None: sample one from policy A)."""

DEFAULT_LENGTH_EDGES: tuple[int, ...] = (0, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


# -- divergence ------------------------------------------------------------------------------


def token_kl(logp_a: Sequence[float], logp_b: Sequence[float], estimator: Estimator) -> list[float]:
    """Per-token KL(A || B) terms of one completion (see the module docstring).

    >>> token_kl([-1.0, -2.0], [-1.0, -2.0], "k3")
    [0.0, 0.0]
    >>> [round(x, 4) for x in token_kl([-0.1], [-2.0], "k1")]
    [1.9]
    """
    if len(logp_a) != len(logp_b):
        raise ValueError(f"{len(logp_a)} log-probs under A but {len(logp_b)} under B")
    out: list[float] = []
    for a, b in zip(logp_a, logp_b, strict=True):
        r = b - a
        if estimator == "k1":
            out.append(-r)
        elif estimator == "k3":
            out.append(math.expm1(min(r, 700.0)) - r)
        else:
            raise ValueError(f"unknown estimator {estimator!r}; use 'k1' or 'k3'")
    return out


def divergence(
    base_model: str | Path,
    adapter_a: AdapterRef | None,
    adapter_b: AdapterRef | None,
    probe: Sequence[ProbeItem],
    *,
    estimator: Estimator = "k3",
    backend: TransformersBackend | None = None,
    max_new_tokens: int = 32,
    seed: int = 0,
) -> float:
    """Mean per-token KL(A || B) estimate in nats between base + `adapter_a` and base +
    `adapter_b` (None: the base alone) on `probe` (see the module docstring).

    Probe items without a completion get one sampled from A (temperature 1, `seed`,
    at most `max_new_tokens` tokens). Pass a loaded `backend` (for `base_model`) to reuse
    it across calls; otherwise one is made for this call and closed after it.
    """
    if not probe:
        raise ValueError("the probe set is empty")
    own = backend is None
    if backend is None:
        from stages.generate.hf import TransformersBackend

        backend = TransformersBackend(base_model)
    try:
        prompts = [list(chat) for chat, _ in probe]
        completions: list[str | None] = [completion for _, completion in probe]
        todo = [i for i, c in enumerate(completions) if c is None]
        if todo:
            params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, seed=seed)
            sampled = backend.generate([prompts[i] for i in todo], params, adapter_a)
            for i, group in zip(todo, sampled, strict=True):
                completions[i] = group[0]
        texts = [str(c) for c in completions]
        logp_a = backend.token_logprobs(prompts, texts, adapter_a)
        if adapter_a == adapter_b:
            logp_b = logp_a
        else:
            logp_b = backend.token_logprobs(prompts, texts, adapter_b)
    finally:
        if own:
            backend.close()
    terms = [t for a, b in zip(logp_a, logp_b, strict=True) for t in token_kl(a, b, estimator)]
    value = math.fsum(terms) / len(terms)
    log.info(
        "KL(%s || %s) = %.4f nats/token (%s, %d tokens, %d sequences)",
        adapter_a.name if adapter_a else "base",
        adapter_b.name if adapter_b else "base",
        value,
        estimator,
        len(terms),
        len(texts),
    )
    return value


# -- snapshots -------------------------------------------------------------------------------


def length_histogram(
    lengths: Iterable[int | float], edges: Sequence[int] = DEFAULT_LENGTH_EDGES
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Counts of `lengths` in the bins [edges[i], edges[i+1]), the last bin open-ended.

    Fixed edges make histograms of different versions comparable.

    >>> length_histogram([0, 1, 2, 3, 9, 5000], edges=(0, 2, 8))
    ((0, 2, 8), (2, 2, 2))
    """
    edges = tuple(int(e) for e in edges)
    if not edges or list(edges) != sorted(set(edges)):
        raise ValueError(f"edges must be strictly increasing, got {edges}")
    counts = [0] * len(edges)
    for value in lengths:
        if value < edges[0]:
            continue
        k = max(i for i, e in enumerate(edges) if value >= e)
        counts[k] += 1
    return edges, tuple(counts)


def _freeze(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class VersionDrift:
    """One adapter version's drift measurements (every field but `version` optional).

    version: a label ("base", "v3").
    created_at: ISO-8601 time of the measurement.
    task_scores: gate task -> score on the regression suite.
    task_metrics: gate task -> the metric's name, for the report's wording ("exact_match").
    response_length_mean: mean response length in characters on the suite.
    length_edges / length_counts: histogram of response lengths (see `length_histogram`).
    judge_score_mean: mean LLM-judge score of the version's recent answers.
    judge_verifier_agreement: share of answers where judge and verifier agree.
    judge_balanced_agreement: the mean of the shares of right answers the judge passed and
        of wrong answers it failed (what the judge-health floor holds; a judge that passes
        everything scores 0.5 however good the policy is).
    kl_from_base / kl_from_previous: `divergence` (nats per token) from the base model and
        from the previous version.
    traffic_mix / training_mix: task -> share among recent interactions / training data.
    feedback_rates: e.g. {"thumbs_up": 0.4, "thumbs_down": 0.1, "corrected": 0.05,
        "contradicted": 0.01} (feedback the task's grader contradicted, not trained on).
    detectable_drop: gate task -> the smallest drop the gate could detect on it (80% power)
        in the cycle that made this version production.
    events: promotions, rollbacks, rejections at this version:
        {"kind": ..., "version": ..., "at": ..., "detail": ...}.
    """

    version: str
    created_at: str | None = None
    task_scores: Mapping[str, float] = field(default_factory=dict)
    task_metrics: Mapping[str, str] = field(default_factory=dict)
    response_length_mean: float | None = None
    length_edges: tuple[int, ...] = ()
    length_counts: tuple[int, ...] = ()
    judge_score_mean: float | None = None
    judge_verifier_agreement: float | None = None
    judge_balanced_agreement: float | None = None
    kl_from_base: float | None = None
    kl_from_previous: float | None = None
    traffic_mix: Mapping[str, float] = field(default_factory=dict)
    training_mix: Mapping[str, float] = field(default_factory=dict)
    feedback_rates: Mapping[str, float] = field(default_factory=dict)
    events: tuple[Mapping[str, Any], ...] = ()
    detectable_drop: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.version:
            raise ValueError("a snapshot needs a version label")
        for name in (
            "task_scores",
            "traffic_mix",
            "training_mix",
            "feedback_rates",
            "detectable_drop",
        ):
            values = {str(k): float(v) for k, v in dict(getattr(self, name)).items()}
            object.__setattr__(self, name, _freeze(values))
        object.__setattr__(self, "task_metrics", _freeze(self.task_metrics))
        object.__setattr__(self, "length_edges", tuple(int(e) for e in self.length_edges))
        object.__setattr__(self, "length_counts", tuple(int(c) for c in self.length_counts))
        if len(self.length_edges) != len(self.length_counts):
            raise ValueError("length_edges and length_counts need the same length")
        object.__setattr__(self, "events", tuple(_freeze(e) for e in self.events))

    @property
    def traffic_distance(self) -> float | None:
        """Total variation distance between the traffic mix and the training mix (0: same
        task shares, 1: disjoint), None unless both are given."""
        if not self.traffic_mix or not self.training_mix:
            return None
        a, b = _normalized(self.traffic_mix), _normalized(self.training_mix)
        return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at,
            "task_scores": dict(self.task_scores),
            "task_metrics": dict(self.task_metrics),
            "response_length_mean": self.response_length_mean,
            "length_edges": list(self.length_edges),
            "length_counts": list(self.length_counts),
            "judge_score_mean": self.judge_score_mean,
            "judge_verifier_agreement": self.judge_verifier_agreement,
            "judge_balanced_agreement": self.judge_balanced_agreement,
            "kl_from_base": self.kl_from_base,
            "kl_from_previous": self.kl_from_previous,
            "traffic_mix": dict(self.traffic_mix),
            "training_mix": dict(self.training_mix),
            "feedback_rates": dict(self.feedback_rates),
            "events": [dict(e) for e in self.events],
            "detectable_drop": dict(self.detectable_drop),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionDrift:
        return cls(
            version=str(data["version"]),
            created_at=data.get("created_at"),
            task_scores=data.get("task_scores") or {},
            task_metrics=data.get("task_metrics") or {},
            response_length_mean=_opt_float(data.get("response_length_mean")),
            length_edges=tuple(data.get("length_edges") or ()),
            length_counts=tuple(data.get("length_counts") or ()),
            judge_score_mean=_opt_float(data.get("judge_score_mean")),
            judge_verifier_agreement=_opt_float(data.get("judge_verifier_agreement")),
            judge_balanced_agreement=_opt_float(data.get("judge_balanced_agreement")),
            kl_from_base=_opt_float(data.get("kl_from_base")),
            kl_from_previous=_opt_float(data.get("kl_from_previous")),
            traffic_mix=data.get("traffic_mix") or {},
            training_mix=data.get("training_mix") or {},
            feedback_rates=data.get("feedback_rates") or {},
            events=tuple(data.get("events") or ()),
            detectable_drop=data.get("detectable_drop") or {},
        )


def _normalized(mix: Mapping[str, float]) -> dict[str, float]:
    total = sum(v for v in mix.values() if v > 0)
    return {k: (v / total if total else 0.0) for k, v in mix.items() if v > 0}


def snapshot_from_run(
    version: str,
    run: Evaluation,
    *,
    created_at: str | None = None,
    length_edges: Sequence[int] = DEFAULT_LENGTH_EDGES,
    **fields: Any,
) -> VersionDrift:
    """A snapshot whose task scores, response lengths and histogram come from an `Evaluation`;
    `fields` fill the rest (judge figures, KL, traffic, events)."""
    lengths = [len(text) for t in run.tasks.values() for text in t.responses.values()]
    edges, counts = length_histogram(lengths, length_edges)
    return VersionDrift(
        version=version,
        created_at=created_at or datetime.now(UTC).isoformat(),
        task_scores={name: t.score for name, t in run.tasks.items()},
        task_metrics={name: t.metric for name, t in run.tasks.items()},
        response_length_mean=(sum(lengths) / len(lengths)) if lengths else None,
        length_edges=edges,
        length_counts=counts,
        **fields,
    )
