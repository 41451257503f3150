"""Drift measurement: divergence between policies, drift snapshots and the drift report.

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
- `DriftSnapshot`: what one adapter version looked like (gate scores per task, response
  lengths, judge figures, divergence from base and from the previous version, traffic mix
  and feedback rates passed in as plain dicts, promotion / rollback events).
- `write_report(snapshots, events, out_dir)`: `report.json` (the same data as series per
  version) and a self-contained `report.html` (matplotlib PNGs embedded as base64 data URIs)
  whose opening paragraph says what moved most since the previous version.

It reads no database and does not decide promotions; the daemon gathers the inputs.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from stages.atomic import write_atomic
from stages.generate.api import AdapterRef, Chat, SamplingParams

if TYPE_CHECKING:
    from evals.run import EvalRun
    from stages.generate.hf import TransformersBackend

log = logging.getLogger(__name__)

REPORT_FORMAT = 1
Estimator = Literal["k1", "k3"]
ProbeItem = tuple[Chat, str | None]
"""A probe: the prompt as chat messages and a completion (None: sample one from policy A)."""

DEFAULT_LENGTH_EDGES: tuple[int, ...] = (0, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_EVENT_STYLE = {
    "promotion": ("#2a9d38", "--"),
    "rollback": ("#d62728", "-"),
    "rejection": ("#888888", ":"),
}


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
class DriftSnapshot:
    """One adapter version's drift measurements (every field but `version` optional).

    version: a label ("base", "v3").
    created_at: ISO-8601 time of the measurement.
    task_scores: gate task -> score on the regression suite.
    task_metrics: gate task -> the metric's name, for the report's wording ("exact_match").
    response_length_mean: mean response length in characters on the suite.
    length_edges / length_counts: histogram of response lengths (see `length_histogram`).
    judge_score_mean: mean LLM-judge score of the version's recent answers.
    judge_verifier_agreement: share of answers where judge and verifier agree.
    kl_from_base / kl_from_previous: `divergence` (nats per token) from the base model and
        from the previous version.
    traffic_mix / training_mix: task -> share among recent interactions / training data.
    feedback_rates: e.g. {"thumbs_up": 0.4, "thumbs_down": 0.1, "corrected": 0.05}.
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
    kl_from_base: float | None = None
    kl_from_previous: float | None = None
    traffic_mix: Mapping[str, float] = field(default_factory=dict)
    training_mix: Mapping[str, float] = field(default_factory=dict)
    feedback_rates: Mapping[str, float] = field(default_factory=dict)
    events: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.version:
            raise ValueError("a snapshot needs a version label")
        for name in ("task_scores", "traffic_mix", "training_mix", "feedback_rates"):
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
            "kl_from_base": self.kl_from_base,
            "kl_from_previous": self.kl_from_previous,
            "traffic_mix": dict(self.traffic_mix),
            "training_mix": dict(self.training_mix),
            "feedback_rates": dict(self.feedback_rates),
            "events": [dict(e) for e in self.events],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftSnapshot:
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
            kl_from_base=_opt_float(data.get("kl_from_base")),
            kl_from_previous=_opt_float(data.get("kl_from_previous")),
            traffic_mix=data.get("traffic_mix") or {},
            training_mix=data.get("training_mix") or {},
            feedback_rates=data.get("feedback_rates") or {},
            events=tuple(data.get("events") or ()),
        )


def _normalized(mix: Mapping[str, float]) -> dict[str, float]:
    total = sum(v for v in mix.values() if v > 0)
    return {k: (v / total if total else 0.0) for k, v in mix.items() if v > 0}


def snapshot_from_run(
    version: str,
    run: EvalRun,
    *,
    created_at: str | None = None,
    length_edges: Sequence[int] = DEFAULT_LENGTH_EDGES,
    **fields: Any,
) -> DriftSnapshot:
    """A snapshot whose task scores, response lengths and histogram come from an `EvalRun`;
    `fields` fill the rest (judge figures, KL, traffic, events)."""
    lengths = [len(text) for t in run.tasks.values() for text in t.responses.values()]
    edges, counts = length_histogram(lengths, length_edges)
    return DriftSnapshot(
        version=version,
        created_at=created_at or datetime.now(UTC).isoformat(),
        task_scores={name: t.score for name, t in run.tasks.items()},
        task_metrics={name: t.metric for name, t in run.tasks.items()},
        response_length_mean=(sum(lengths) / len(lengths)) if lengths else None,
        length_edges=edges,
        length_counts=counts,
        **fields,
    )


# -- the summary -----------------------------------------------------------------------------


def _verb(delta: float, up: str = "rose", down: str = "fell") -> str:
    return up if delta > 0 else down


def summarize(snapshots: Sequence[DriftSnapshot], events: Sequence[Mapping[str, Any]] = ()) -> str:
    """A few sentences saying what moved most at the latest version since the previous one."""
    if not snapshots:
        return "No drift snapshots yet."
    cur = snapshots[-1]
    at_cur = [e for e in _merge_events(snapshots, events) if e.get("version") == cur.version]
    happened = "; ".join(f"{e.get('kind', 'event')} ({cur.version})" for e in at_cur)
    if len(snapshots) == 1:
        parts = [
            f"{task} {cur.task_metrics.get(task, 'score')} {score:.2f}"
            for task, score in cur.task_scores.items()
        ]
        if cur.kl_from_base is not None:
            parts.append(f"KL from base {cur.kl_from_base:.2f} nats")
        if cur.response_length_mean is not None:
            parts.append(f"mean length {cur.response_length_mean:.1f} characters")
        text = f"First snapshot ({cur.version}): " + ("; ".join(parts) or "no measurements") + "."
        return text + (f" Events: {happened}." if happened else "")

    prev = snapshots[-2]
    moved: list[tuple[float, str]] = []  # (magnitude for ranking, words)
    for task, score in cur.task_scores.items():
        metric = cur.task_metrics.get(task, "score")
        if task not in prev.task_scores:
            moved.append((abs(score), f"{task} {metric} is new at {score:.2f}"))
            continue
        before = prev.task_scores[task]
        delta = score - before
        if abs(delta) >= 0.005:
            moved.append(
                (
                    abs(delta),
                    f"{task} {metric} {_verb(delta)} from {before:.2f} to {score:.2f} "
                    f"({delta:+.2f})",
                )
            )
    for task in prev.task_scores:
        if task not in cur.task_scores:
            moved.append((0.0, f"{task} is no longer measured"))
    moved.sort(key=lambda m: -m[0])
    parts = [words for _, words in moved[:3]]
    if not parts and cur.task_scores:
        parts.append("task scores held steady")
    if cur.kl_from_base is not None:
        if prev.kl_from_base is not None and abs(cur.kl_from_base - prev.kl_from_base) > 1e-9:
            verb = _verb(cur.kl_from_base - prev.kl_from_base, "grew", "shrank")
            parts.append(
                f"KL from base {verb} to {cur.kl_from_base:.2f} nats (from {prev.kl_from_base:.2f})"
            )
        else:
            parts.append(f"KL from base is {cur.kl_from_base:.2f} nats")
    if cur.kl_from_previous is not None:
        parts.append(f"KL from the previous version {cur.kl_from_previous:.2f} nats")
    if cur.response_length_mean is not None and prev.response_length_mean:
        change = (cur.response_length_mean - prev.response_length_mean) / prev.response_length_mean
        if abs(change) >= 0.01:
            parts.append(f"mean length {_verb(change)} {abs(change):.0%}")
        else:
            parts.append("mean length held steady")
    if cur.judge_score_mean is not None and prev.judge_score_mean is not None:
        delta = cur.judge_score_mean - prev.judge_score_mean
        if abs(delta) >= 0.005:
            parts.append(
                f"mean judge score {_verb(delta)} from {prev.judge_score_mean:.2f} to "
                f"{cur.judge_score_mean:.2f}"
            )
    if cur.judge_verifier_agreement is not None and prev.judge_verifier_agreement is not None:
        delta = cur.judge_verifier_agreement - prev.judge_verifier_agreement
        if abs(delta) >= 0.01:
            parts.append(
                f"judge-verifier agreement {_verb(delta)} to {cur.judge_verifier_agreement:.0%}"
            )
    distance = cur.traffic_distance
    if distance is not None and distance >= 0.1:
        parts.append(f"traffic mix is {distance:.2f} (total variation) away from the training mix")
    text = f"Since {prev.version}, {cur.version}: " + "; ".join(parts) + "."
    return text + (f" Events: {happened}." if happened else "")


# -- the report ------------------------------------------------------------------------------


def _merge_events(
    snapshots: Sequence[DriftSnapshot], events: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Snapshot events and extra events, without duplicates, in order of time when known."""
    seen: set[tuple[str, str, str]] = set()
    merged: list[dict[str, Any]] = []
    for event in [*(e for s in snapshots for e in s.events), *events]:
        item = {str(k): v for k, v in dict(event).items()}
        key = (str(item.get("kind")), str(item.get("version")), str(item.get("at")))
        if key in seen:
            continue
        seen.add(key)
        merged.append(item)
    merged.sort(key=lambda e: str(e.get("at") or ""))
    return merged


def _series(snapshots: Sequence[DriftSnapshot]) -> dict[str, Any]:
    def per_key(attr: str) -> dict[str, list[float | None]]:
        keys: list[str] = []
        for s in snapshots:
            keys += [k for k in getattr(s, attr) if k not in keys]
        return {k: [getattr(s, attr).get(k) for s in snapshots] for k in keys}

    return {
        "task_scores": per_key("task_scores"),
        "kl_from_base": [s.kl_from_base for s in snapshots],
        "kl_from_previous": [s.kl_from_previous for s in snapshots],
        "response_length_mean": [s.response_length_mean for s in snapshots],
        "judge_score_mean": [s.judge_score_mean for s in snapshots],
        "judge_verifier_agreement": [s.judge_verifier_agreement for s in snapshots],
        "traffic_mix": per_key("traffic_mix"),
        "training_mix": per_key("training_mix"),
        "traffic_training_distance": [s.traffic_distance for s in snapshots],
        "feedback_rates": per_key("feedback_rates"),
    }


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot_lines(
    ax: Any, x: list[int], series: Mapping[str, Sequence[float | None]], ylabel: str
) -> bool:
    drawn = False
    for name, values in series.items():
        points = [(i, v) for i, v in zip(x, values, strict=True) if v is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
            drawn = True
    ax.set_ylabel(ylabel)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return drawn


def _mark_events(ax: Any, versions: list[str], events: Sequence[Mapping[str, Any]]) -> None:
    """A vertical line per event at its version; one label per version naming its events in
    order ("promotion + rollback")."""
    labels: dict[int, list[tuple[str, str]]] = {}
    for event in events:
        version = str(event.get("version"))
        if version not in versions:
            continue
        kind = str(event.get("kind", "event"))
        color, style = _EVENT_STYLE.get(kind, ("#1f77b4", "-."))
        x = versions.index(version)
        ax.axvline(x, color=color, linestyle=style, linewidth=1.2, alpha=0.8)
        labels.setdefault(x, []).append((kind, color))
    for x, kinds in labels.items():
        ax.text(
            x,
            0.97,
            " + ".join(kind for kind, _ in kinds) + " ",
            transform=ax.get_xaxis_transform(),  # x in data, y in axes fraction
            rotation=90,
            rotation_mode="anchor",
            ha="right",
            va="bottom",
            fontsize=7,
            color=kinds[-1][1],
        )


def _figures(
    snapshots: Sequence[DriftSnapshot], series: Mapping[str, Any], events: Sequence[Mapping]
) -> list[tuple[str, str]]:
    """(caption, data URI) of every chart. Figures are made without pyplot (no global state,
    no GUI): each `Figure` gets matplotlib's Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    versions = [s.version for s in snapshots]
    x = list(range(len(versions)))
    out: list[tuple[str, str]] = []

    def axes(title: str, ncols: int = 1) -> tuple[Any, Any]:
        fig = Figure(figsize=(7 * ncols, 3.4))
        FigureCanvasAgg(fig)
        ax = fig.subplots(1, ncols, squeeze=False)
        fig.suptitle(title, fontsize=11)
        for a in ax[0]:
            a.set_xlim(-0.5, len(versions) - 0.5)
            a.set_xticks(x)
            a.set_xticklabels(versions, rotation=30 if len(versions) > 8 else 0)
            a.grid(alpha=0.3)
        return fig, ax[0]

    fig, (ax,) = axes("Gate score per task across versions")
    _plot_lines(ax, x, series["task_scores"], "score")
    ax.set_ylim(-0.02, 1.02)
    _mark_events(ax, versions, events)
    out.append(("Gate score per task (promotions and rollbacks marked)", _png(fig)))

    fig, (ax,) = axes("Divergence (nats per token)")
    _plot_lines(
        ax,
        x,
        {"KL from base": series["kl_from_base"], "KL from previous": series["kl_from_previous"]},
        "KL",
    )
    _mark_events(ax, versions, events)
    out.append(("Divergence from the base and from the previous version", _png(fig)))

    fig, (ax_len, ax_hist) = axes("Response length", ncols=2)
    _plot_lines(ax_len, x, {"mean length": series["response_length_mean"]}, "characters")
    _mark_events(ax_len, versions, events)
    ax_hist.set_xticks([])
    with_hist = [s for s in snapshots if s.length_counts]
    if with_hist:
        shown = with_hist[-2:]
        width = 0.8 / len(shown)
        edges = shown[-1].length_edges
        for k, s in enumerate(shown):
            counts = s.length_counts
            total = sum(counts) or 1
            ax_hist.bar(
                [i + k * width for i in range(len(counts))],
                [c / total for c in counts],
                width=width,
                label=s.version,
            )
        labels = [f"{edges[i]}-{edges[i + 1] - 1}" for i in range(len(edges) - 1)]
        labels.append(f"{edges[-1]}+")
        ax_hist.set_xlim(-0.5, len(edges) - 0.2)
        ax_hist.set_xticks([i + 0.4 - width / 2 for i in range(len(edges))])
        ax_hist.set_xticklabels(labels, rotation=45, fontsize=7)
        ax_hist.set_ylabel("share of responses")
        ax_hist.legend(fontsize=8)
    else:
        ax_hist.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax_hist.transAxes)
    out.append(("Mean response length per version; length histogram of the last two", _png(fig)))

    fig, (ax,) = axes("Judge")
    _plot_lines(
        ax,
        x,
        {
            "mean judge score": series["judge_score_mean"],
            "judge-verifier agreement": series["judge_verifier_agreement"],
        },
        "value",
    )
    _mark_events(ax, versions, events)
    out.append(("Mean judge score and judge-verifier agreement", _png(fig)))

    fig, (ax_mix, ax_fb) = axes("Traffic", ncols=2)
    mix = {f"traffic {k}": v for k, v in series["traffic_mix"].items()}
    mix |= {f"training {k}": v for k, v in series["training_mix"].items()}
    mix["traffic-training distance (TV)"] = series["traffic_training_distance"]
    _plot_lines(ax_mix, x, mix, "share")
    _plot_lines(ax_fb, x, series["feedback_rates"], "rate")
    _mark_events(ax_fb, versions, events)
    out.append(("Task mix of recent traffic vs training data; feedback rates", _png(fig)))
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _html(
    summary: str,
    snapshots: Sequence[DriftSnapshot],
    series: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    figures: Sequence[tuple[str, str]],
    generated_at: str,
) -> str:
    esc = html.escape
    versions = [s.version for s in snapshots]
    rows = []
    for task, values in series["task_scores"].items():
        rows.append((task, values))
    for name in ("kl_from_base", "kl_from_previous", "response_length_mean"):
        rows.append((name.replace("_", " "), series[name]))
    for name in ("judge_score_mean", "judge_verifier_agreement", "traffic_training_distance"):
        rows.append((name.replace("_", " "), series[name]))
    head = "".join(f"<th>{esc(v)}</th>" for v in versions)
    body = "".join(
        f"<tr><th>{esc(name)}</th>{''.join(f'<td>{_fmt(v)}</td>' for v in values)}</tr>"
        for name, values in rows
    )
    event_rows = "".join(
        "<tr>"
        + "".join(f"<td>{_fmt(e.get(k))}</td>" for k in ("at", "kind", "version", "detail"))
        + "</tr>"
        for e in events
    )
    images = "".join(
        f'<figure><img alt="{esc(caption)}" src="{uri}"><figcaption>{esc(caption)}'
        "</figcaption></figure>"
        for caption, uri in figures
    )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}"
        "p.summary{font-size:1.1em;background:#f3f6fa;padding:.8em;border-left:4px solid #468}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:right}th{background:#f5f5f5}figure{margin:1em 0}img{max-width:100%}"
    )
    span = f"{versions[0]} … {versions[-1]}" if versions else "no versions"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>tutord drift report</title>'
        f"<style>{style}</style></head><body>\n"
        f'<p class="summary" id="summary">{esc(summary)}</p>\n'
        f"<h1>tutord drift report ({esc(span)})</h1>\n"
        f"<p>Generated {esc(generated_at)}; {len(snapshots)} versions, {len(events)} events."
        " KL: per-token estimate in nats (see evals.drift). Lengths in characters.</p>\n"
        f"<h2>Numbers per version</h2><table><tr><th></th>{head}</tr>{body}</table>\n"
        f"<h2>Charts</h2>{images}\n"
        "<h2>Promotions and rollbacks</h2><table><tr><th>at</th><th>kind</th><th>version</th>"
        f"<th>detail</th></tr>{event_rows}</table>\n"
        "</body></html>\n"
    )


def _jsonable(value: Any) -> Any:
    """NaN and infinities become null: the report is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_report(
    snapshots: list[DriftSnapshot], events: list[dict[str, Any]], out_dir: Path
) -> tuple[Path, Path]:
    """Write `report.json` and a self-contained `report.html` into `out_dir`; each file is
    written to a temporary name and renamed into place. Returns (json path, html path).

    `snapshots` are in version order (oldest first); `events` are dicts with "kind"
    ("promotion", "rollback", "rejection", ...), "version", "at" (ISO time) and "detail",
    merged with the snapshots' own events.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged = _merge_events(snapshots, events)
    summary = summarize(snapshots, events)
    series = _series(snapshots)
    generated_at = datetime.now(UTC).isoformat()
    report = {
        "format": REPORT_FORMAT,
        "generated_at": generated_at,
        "summary": summary,
        "versions": [s.version for s in snapshots],
        "series": series,
        "snapshots": [s.to_dict() for s in snapshots],
        "events": merged,
    }
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    text = json.dumps(_jsonable(report), indent=2, allow_nan=False, default=str)
    write_atomic(json_path, text.encode("utf-8"))
    figures = _figures(snapshots, series, merged) if snapshots else []
    page = _html(summary, snapshots, series, merged, figures, generated_at)
    write_atomic(html_path, page.encode("utf-8"))
    log.info("drift report for %d versions: %s", len(snapshots), summary)
    return json_path, html_path
