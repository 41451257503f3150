"""The drift report: a summary of what moved, `report.json` and a self-contained `report.html`.

- `summarize(snapshots, events)`: a few sentences saying what moved most at the latest
  version since the previous one (the report's opening paragraph).
- `write_report(snapshots, events, out_dir)`: `report.json` (the same data as series per
  version, strict JSON) and `report.html` (the summary, a table of numbers per version, the
  charts of `evals.drift_charts` embedded as data URIs, and the promotions and rollbacks).

It does not measure anything (`evals.drift` makes the `VersionDrift` snapshots), draw the
charts (`evals.drift_charts`), read the database or decide promotions.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals.drift import VersionDrift
from evals.drift_charts import figures
from stages.atomic import write_atomic

log = logging.getLogger(__name__)

REPORT_FORMAT = 1


# -- the summary -----------------------------------------------------------------------------


def _verb(delta: float, up: str = "rose", down: str = "fell") -> str:
    return up if delta > 0 else down


def summarize(snapshots: Sequence[VersionDrift], events: Sequence[Mapping[str, Any]] = ()) -> str:
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
    if cur.judge_balanced_agreement is not None and prev.judge_balanced_agreement is not None:
        delta = cur.judge_balanced_agreement - prev.judge_balanced_agreement
        if abs(delta) >= 0.01:
            parts.append(f"balanced agreement {_verb(delta)} to {cur.judge_balanced_agreement:.0%}")
    distance = cur.traffic_distance
    if distance is not None and distance >= 0.1:
        parts.append(f"traffic mix is {distance:.2f} (total variation) away from the training mix")
    text = f"Since {prev.version}, {cur.version}: " + "; ".join(parts) + "."
    return text + (f" Events: {happened}." if happened else "")


# -- the report ------------------------------------------------------------------------------


def _merge_events(
    snapshots: Sequence[VersionDrift], events: Sequence[Mapping[str, Any]]
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


def _series(snapshots: Sequence[VersionDrift]) -> dict[str, Any]:
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
        "judge_balanced_agreement": [s.judge_balanced_agreement for s in snapshots],
        "traffic_mix": per_key("traffic_mix"),
        "training_mix": per_key("training_mix"),
        "traffic_training_distance": [s.traffic_distance for s in snapshots],
        "feedback_rates": per_key("feedback_rates"),
        "detectable_drop": per_key("detectable_drop"),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _html(
    summary: str,
    snapshots: Sequence[VersionDrift],
    series: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    charts: Sequence[tuple[str, str]],
    generated_at: str,
) -> str:
    esc = html.escape
    versions = [s.version for s in snapshots]
    rows = []
    for task, values in series["task_scores"].items():
        rows.append((task, values))
    for name in ("kl_from_base", "kl_from_previous", "response_length_mean"):
        rows.append((name.replace("_", " "), series[name]))
    for name in (
        "judge_score_mean",
        "judge_verifier_agreement",
        "judge_balanced_agreement",
        "traffic_training_distance",
    ):
        rows.append((name.replace("_", " "), series[name]))
    for task, values in series["detectable_drop"].items():
        rows.append((f"{task}: smallest drop the gate could see", values))
    for key, values in series["feedback_rates"].items():
        rows.append((f"feedback {key}", values))
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
        for caption, uri in charts
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
    snapshots: list[VersionDrift], events: list[dict[str, Any]], out_dir: Path
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
    charts = figures(snapshots, series, merged) if snapshots else []
    page = _html(summary, snapshots, series, merged, charts, generated_at)
    write_atomic(html_path, page.encode("utf-8"))
    log.info("drift report for %d versions: %s", len(snapshots), summary)
    return json_path, html_path
