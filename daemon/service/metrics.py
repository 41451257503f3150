"""Prometheus metrics of the HTTP API: one `CollectorRegistry` per app, filled at scrape time.

`ServiceMetrics` holds the gauges (read from the database by `refresh` just before each
scrape, with cheap counts and group-bys) and the request counter the API increments itself:

- `tutord_cycles{outcome}`: cycles by outcome (`none`: not finished yet);
- `tutord_last_cycle_duration_seconds`: the working time (sum of its step timings) of the
  latest finished cycle;
- `tutord_last_successful_cycle_timestamp_seconds`: when the latest cycle that ran to the
  end (state `done`: its candidate promoted or rejected by the gate) finished;
- `tutord_interactions{source}`, `tutord_preference_pairs`: rows stored;
- `tutord_spool_backlog_files`: complete files waiting in the spool folder;
- `tutord_production_version` (-1: the bare base model), `tutord_promotions`,
  `tutord_rollbacks` (moves of the production pointer);
- `tutord_gate_score{task}`: the production version's scores at its latest gate evaluation;
- `tutord_leader`: 1 while this process holds leadership (from `ServiceState`);
- `tutord_http_requests_total{route,status}`: requests served, by route template.

It does not serve anything (see `daemon/service/api.py`) and never uses the global registry,
so that several apps (tests) can live in one process.
"""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from sqlalchemy import Connection, Engine, func, or_, select

from daemon.models import Cycle, GateDecision, ProductionMove, ProductionPointer
from daemon.service.spool import waiting
from replay.models import Interaction, PreferencePair

NO_OUTCOME = "none"
BASE_VERSION = -1


class ServiceMetrics:
    """The metrics of one app, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        r = self.registry
        self.cycles = Gauge("tutord_cycles", "Cycles by outcome.", ["outcome"], registry=r)
        self.last_cycle_duration = Gauge(
            "tutord_last_cycle_duration_seconds",
            "Working time of the latest finished cycle.",
            registry=r,
        )
        self.last_success = Gauge(
            "tutord_last_successful_cycle_timestamp_seconds",
            "When the latest cycle that ran to the end finished (Unix time).",
            registry=r,
        )
        self.interactions = Gauge(
            "tutord_interactions", "Interactions stored, by source.", ["source"], registry=r
        )
        self.pairs = Gauge("tutord_preference_pairs", "Preference pairs stored.", registry=r)
        self.spool_backlog = Gauge(
            "tutord_spool_backlog_files", "Files waiting in the spool folder.", registry=r
        )
        self.production = Gauge(
            "tutord_production_version",
            "The production adapter version (-1: the bare base model).",
            registry=r,
        )
        self.promotions = Gauge("tutord_promotions", "Promotions to production.", registry=r)
        self.rollbacks = Gauge("tutord_rollbacks", "Rollbacks of production.", registry=r)
        self.gate_score = Gauge(
            "tutord_gate_score",
            "The production version's scores at its latest gate evaluation.",
            ["task"],
            registry=r,
        )
        self.leader = Gauge("tutord_leader", "1 while this process holds leadership.", registry=r)
        self.http_requests = Counter(
            "tutord_http_requests", "HTTP requests served.", ["route", "status"], registry=r
        )

    def count_request(self, route: str, status: int) -> None:
        self.http_requests.labels(route=route, status=str(status)).inc()

    def scrape(self, engine: Engine, spool_dir: Path, leader: bool) -> bytes:
        """Refresh the gauges and return the text exposition."""
        with self._lock:
            refresh(self, engine, spool_dir, leader)
            return generate_latest(self.registry)


def refresh(metrics: ServiceMetrics, engine: Engine, spool_dir: Path, leader: bool) -> None:
    """Set every gauge from the database, the spool folder and the leadership flag."""
    with engine.connect() as conn:
        _refresh_cycles(metrics, conn)
        _refresh_data(metrics, conn)
        _refresh_production(metrics, conn)
    metrics.spool_backlog.set(len(waiting(spool_dir)))
    metrics.leader.set(1 if leader else 0)


def _refresh_cycles(metrics: ServiceMetrics, conn: Connection) -> None:
    metrics.cycles.clear()
    for outcome, n in conn.execute(select(Cycle.outcome, func.count()).group_by(Cycle.outcome)):
        metrics.cycles.labels(outcome=outcome or NO_OUTCOME).set(n)
    last = conn.execute(
        select(Cycle.step_timings)
        .where(Cycle.finished_at.is_not(None))
        .order_by(Cycle.id.desc())
        .limit(1)
    ).first()
    timings: dict[str, Any] = (last[0] or {}) if last else {}
    metrics.last_cycle_duration.set(sum(float(v) for v in timings.values()))
    success = conn.execute(
        select(func.max(Cycle.finished_at)).where(Cycle.state == "done")
    ).scalar_one()
    metrics.last_success.set(0 if success is None else _as_utc(success).timestamp())


def _refresh_data(metrics: ServiceMetrics, conn: Connection) -> None:
    metrics.interactions.clear()
    query = select(Interaction.source, func.count()).group_by(Interaction.source)
    for source, n in conn.execute(query):
        metrics.interactions.labels(source=source).set(n)
    pairs = conn.execute(select(func.count()).select_from(PreferencePair)).scalar_one()
    metrics.pairs.set(pairs)


def _refresh_production(metrics: ServiceMetrics, conn: Connection) -> None:
    prod = conn.execute(
        select(ProductionPointer.version).where(ProductionPointer.id == 1)
    ).scalar_one_or_none()
    metrics.production.set(BASE_VERSION if prod is None else prod)
    moves = dict(
        conn.execute(select(ProductionMove.kind, func.count()).group_by(ProductionMove.kind)).all()
    )
    metrics.promotions.set(moves.get("promote", 0))
    metrics.rollbacks.set(moves.get("rollback", 0))
    metrics.gate_score.clear()
    for task, score in gate_scores(conn, prod).items():
        metrics.gate_score.labels(task=task).set(score)


def gate_scores(conn: Connection, version: int | None) -> dict[str, float]:
    """`version`'s score per task at the latest gate decision that evaluated it, as the
    candidate or as the production it was compared with (None: the bare base)."""
    as_production = (
        GateDecision.production_version.is_(None)
        if version is None
        else GateDecision.production_version == version
    )
    where = (
        as_production
        if version is None
        else or_(GateDecision.candidate_version == version, as_production)
    )
    row = conn.execute(
        select(GateDecision.candidate_version, GateDecision.tasks)
        .where(where)
        .order_by(GateDecision.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return {}
    side = "candidate" if version is not None and row[0] == version else "production"
    scores: dict[str, float] = {}
    for task, result in (row[1] or {}).items():
        value = result.get(side) if isinstance(result, dict) else None
        if not (isinstance(result, dict) and result.get("missing")) and _finite(value):
            scores[task] = float(value)
    return scores


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _as_utc(value: datetime) -> datetime:
    """A stored timestamp, zone attached if a backend returned it naive (it is UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
