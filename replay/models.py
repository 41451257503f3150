"""SQLAlchemy 2 typed ORM mappings for tutord's tables.

One declarative base with one naming convention; timestamps are timezone-aware UTC.
This module only declares tables: Alembic migrations (in `migrations/`) are the only
thing that creates or changes them, and `create_all` is used by test fixtures alone.

Tables that later parts of tutord need (cycles, adapter versions, eval runs, leases)
are added by their own migrations when they are built; nothing here guesses them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite keeps no zone; PostgreSQL's `timestamptz` does. Naive values are refused
    on the way in, so no local time ever slips into the database.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; attach a timezone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base: shared metadata with tutord's naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: UTCDateTime,
    }


class Interaction(Base):
    """One conversation a user had with a served model, with whatever feedback came back.

    `record_key` is the record's identity: `id:<source>:<id>` when the log gave an id
    (`idsha256:<hash of source and id>` when that would pass 300 characters), else
    `sha256:<hash of the canonical content>`; it is unique, which makes ingest
    idempotent.
    """

    __tablename__ = "interactions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_key: Mapped[str] = mapped_column(String(300), unique=True)
    source: Mapped[str] = mapped_column(String(200), index=True)
    external_id: Mapped[str | None] = mapped_column(String(256))
    content_hash: Mapped[str] = mapped_column(String(64))
    messages: Mapped[list[Any]] = mapped_column(JSON)
    feedback_rating: Mapped[int | None] = mapped_column(SmallInteger)
    feedback_correction: Mapped[str | None] = mapped_column(Text)
    feedback_comment: Mapped[str | None] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    task: Mapped[str | None] = mapped_column(String(200), index=True)
    adapter: Mapped[str | None] = mapped_column(String(200))
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class PreferencePair(Base):
    """A prompt with a preferred and a dispreferred answer.

    `origin` says where it came from: `ingest` (given by a log), `feedback` (built from
    user feedback) or `synth` (built from judged samples, with the two sample ids).
    """

    __tablename__ = "preference_pairs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_key: Mapped[str] = mapped_column(String(300), unique=True)
    source: Mapped[str] = mapped_column(String(200), index=True)
    external_id: Mapped[str | None] = mapped_column(String(256))
    content_hash: Mapped[str] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(32), default="ingest")
    prompt: Mapped[list[Any]] = mapped_column(JSON)
    chosen: Mapped[str] = mapped_column(Text)
    rejected: Mapped[str] = mapped_column(Text)
    task: Mapped[str | None] = mapped_column(String(200), index=True)
    interaction_id: Mapped[int | None] = mapped_column(ForeignKey("interactions.id"))
    chosen_sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id"))
    rejected_sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id"))
    margin: Mapped[float | None] = mapped_column(Double)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SynthRun(Base):
    """One synthesis run: its settings, what it produced, and the judge's health on it."""

    __tablename__ = "synth_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int | None] = mapped_column(Integer, index=True)
    adapter: Mapped[str] = mapped_column(String(200))
    seed: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    health: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Sample(Base):
    """A candidate answer generated by a policy for a prompt (self-rewarded synthesis)."""

    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    synth_run_id: Mapped[int | None] = mapped_column(ForeignKey("synth_runs.id"), index=True)
    prompt: Mapped[list[Any]] = mapped_column(JSON)
    prompt_hash: Mapped[str] = mapped_column(String(64), index=True)
    completion: Mapped[str] = mapped_column(Text)
    task: Mapped[str | None] = mapped_column(String(200), index=True)
    interaction_id: Mapped[int | None] = mapped_column(ForeignKey("interactions.id"))
    adapter: Mapped[str | None] = mapped_column(String(200))
    generation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SFTExample(Base):
    """A prompt with a target completion: a high-scoring candidate (`synth`), a user's
    correction (`feedback`), with where it came from. `record_key` makes writes idempotent."""

    __tablename__ = "sft_examples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_key: Mapped[str] = mapped_column(String(300), unique=True)
    origin: Mapped[str] = mapped_column(String(32))
    prompt: Mapped[list[Any]] = mapped_column(JSON)
    completion: Mapped[str] = mapped_column(Text)
    task: Mapped[str | None] = mapped_column(String(200), index=True)
    reward: Mapped[float | None] = mapped_column(Double)
    sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id"))
    interaction_id: Mapped[int | None] = mapped_column(ForeignKey("interactions.id"))
    synth_run_id: Mapped[int | None] = mapped_column(ForeignKey("synth_runs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Judgment(Base):
    """One scorer's verdict on one sample; `score` is None when the scorer abstained."""

    __tablename__ = "judgments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"))
    scorer: Mapped[str] = mapped_column(String(200))
    score: Mapped[float | None] = mapped_column(Double)
    raw: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_judgments_sample_id_scorer", "sample_id", "scorer"),)


class ReplayItem(Base):
    """A training row kept for replay: an SFT example, a preference pair or an RL prompt.

    `payload` is self-contained (what the stage trains on). `rand_key` is a
    deterministic pseudo-random number in [0, 1) derived from the payload's hash;
    sampling reads index ranges on it instead of scanning the table.
    """

    __tablename__ = "replay_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(64))
    priority: Mapped[float] = mapped_column(Double, default=1.0)
    rand_key: Mapped[float] = mapped_column(Double)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_replay_items_kind_task_rand_key", "kind", "task", "rand_key"),
        Index("ix_replay_items_kind_task_added_at", "kind", "task", "added_at"),
    )


class ReplayCount(Base):
    """How many replay items each (kind, task) holds, kept in step with `replay_items`.

    Sampling needs per-task counts; counting a million-row table each time would scan.
    """

    __tablename__ = "replay_counts"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    task: Mapped[str] = mapped_column(String(200), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)
