"""Tables the daemon keeps: imported base models, adapter versions, the production pointer
and its moves, improvement cycles with their evaluations and gate decisions, drift
snapshots, leases.

They share `replay.models.Base` (one metadata, one naming convention) so that Alembic
sees every table. The adapter folders themselves are in `stages/registry.py`; the
database is the source of truth for which version is production.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from replay.models import Base, UTCDateTime, utcnow

ADAPTER_STATUSES = ("candidate", "promoted", "rejected", "deleted")


class AdapterVersion(Base):
    """One adapter version in the registry: where it came from and what became of it."""

    __tablename__ = "adapter_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(32), unique=True)
    parent: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.version"))
    base_id: Mapped[str] = mapped_column(String(500))
    base_config_sha256: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    status_reason: Mapped[str | None] = mapped_column(Text)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint(
            "status IN ('candidate', 'promoted', 'rejected', 'deleted')", name="status"
        ),
    )


class ProductionPointer(Base):
    """The single row saying which adapter is production (NULL: the bare base model)."""

    __tablename__ = "production_pointer"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.version"))
    moved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class ProductionMove(Base):
    """One move of the production pointer: from where to where, who, when, why."""

    __tablename__ = "production_moves"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    from_version: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.version"))
    to_version: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.version"))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    moved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    __table_args__ = (CheckConstraint("kind IN ('promote', 'rollback')", name="kind"),)


CYCLE_STATES = (
    "synthesize",
    "assemble",
    "train",
    "gate",
    "decide",
    "report",
    "done",
    "skipped",
    "failed",
)


class Cycle(Base):
    """One improvement cycle; `state` is the next step to run (or how it ended)."""

    __tablename__ = "cycles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="synthesize", index=True)
    requested_stage: Mapped[str] = mapped_column(String(8), default="auto")
    stage: Mapped[str | None] = mapped_column(String(8))
    decision_reason: Mapped[str | None] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    parent_version: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.version"))
    candidate_version: Mapped[int | None] = mapped_column(Integer)
    synth_run_id: Mapped[int | None] = mapped_column(ForeignKey("synth_runs.id"))
    watermarks: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dataset: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    train_result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    outcome: Mapped[str | None] = mapped_column(String(16))
    outcome_reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    step_timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class EvalRun(Base):
    """One lm-eval evaluation of one policy on the gate's suite, per-item results included."""

    __tablename__ = "eval_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    adapter: Mapped[str] = mapped_column(String(32))
    suite_hash: Mapped[str] = mapped_column(String(64))
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    results: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GateDecision(Base):
    """What the regression gate decided about a candidate, and why."""

    __tablename__ = "gate_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id"), unique=True)
    candidate_version: Mapped[int] = mapped_column(Integer)
    production_version: Mapped[int | None] = mapped_column(Integer)
    passed: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    tasks: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DriftSnapshot(Base):
    """Drift measurements of the production version after a cycle (for `tutord report`)."""

    __tablename__ = "drift_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"), unique=True)
    version: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Lease(Base):
    """A named lease (APScheduler style): who holds it and until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    acquired_by: Mapped[str] = mapped_column(String(200))
    acquired_until: Mapped[datetime] = mapped_column(UTCDateTime)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    token: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    """Fencing token: grows at every takeover of the lease (`daemon/service/leader.py`)."""


class ServiceJob(Base):
    """The last run of one of `tutord run`'s jobs (`daemon/service/jobs.py`)."""

    __tablename__ = "service_jobs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_started: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_finished: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    runs: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class ImportedModel(Base):
    """A base model brought into the home by `tutord model import`: where it came from
    (with the source's hash), where its folder is, and its chat template."""

    __tablename__ = "imported_models"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    source_kind: Mapped[str] = mapped_column(String(16))
    source_sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    dtype: Mapped[str] = mapped_column(String(16))
    architecture: Mapped[str] = mapped_column(String(100))
    parameters: Mapped[int] = mapped_column(BigInteger)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    chat_template: Mapped[str | None] = mapped_column(Text)
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("source_kind IN ('gguf', 'folder', 'named')", name="source_kind"),
    )
