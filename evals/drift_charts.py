"""The charts of the drift report, as PNG data URIs to embed in `report.html`.

`figures(snapshots, series, events)` draws, across versions: the gate score per task, the
divergence from the base and from the previous version, the mean response length with the
length histogram of the last two versions, the judge figures, and the traffic and training
task mix with the feedback rates; promotions, rollbacks and rejections are marked at their
version. Figures are made without pyplot (no global state, no GUI): each `Figure` gets
matplotlib's Agg canvas, and matplotlib is imported only when `figures` runs.

It does not compute the series (`evals.drift_report`) or write any file.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evals.drift import VersionDrift

_EVENT_STYLE = {
    "promotion": ("#2a9d38", "--"),
    "rollback": ("#d62728", "-"),
    "rejection": ("#888888", ":"),
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


def figures(
    snapshots: Sequence[VersionDrift], series: Mapping[str, Any], events: Sequence[Mapping]
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
            "balanced agreement": series.get("judge_balanced_agreement", []),
        },
        "value",
    )
    _mark_events(ax, versions, events)
    out.append(("Mean judge score and judge-verifier agreement (plain and balanced)", _png(fig)))

    fig, (ax_mix, ax_fb) = axes("Traffic", ncols=2)
    mix = {f"traffic {k}": v for k, v in series["traffic_mix"].items()}
    mix |= {f"training {k}": v for k, v in series["training_mix"].items()}
    mix["traffic-training distance (TV)"] = series["traffic_training_distance"]
    _plot_lines(ax_mix, x, mix, "share")
    _plot_lines(ax_fb, x, series["feedback_rates"], "rate")
    _mark_events(ax_fb, versions, events)
    out.append(("Task mix of recent traffic vs training data; feedback rates", _png(fig)))
    return out
