"""Tables the daemon keeps: adapter versions, the production pointer and its moves.

They share `replay.models.Base` (one metadata, one naming convention) so that Alembic
sees every table. The adapter folders themselves are in `stages/registry.py`; the
database is the source of truth for which version is production.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Integer, String, Text
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
