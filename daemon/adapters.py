"""Adapter versions in the database: registering, the production pointer, rollback, retention.

The database is the source of truth for which adapter is production. Moving the
pointer is one transaction: a compare-and-set on the single pointer row plus a row in
`production_moves` saying who moved it, when and why. Folders are written and
verified by `stages/registry.py`; this module records and decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from daemon.lease import check_fence
from daemon.models import AdapterVersion, ProductionMove, ProductionPointer
from replay.db import session_scope
from replay.models import utcnow
from stages import registry

BASE = None
"""The bare base model, as a production target: no adapter."""

_moves_made_here = 0


def moves_made_here() -> int:
    """How many times this process has moved the production pointer. A reader that caches
    production (the proxy) rereads it when this changes; moves by other processes it sees
    when its cache expires."""
    return _moves_made_here


class AdapterStateError(Exception):
    """A move that cannot be made: unknown or deleted version, concurrent move, ..."""


@dataclass(frozen=True)
class Move:
    """One move of the production pointer."""

    kind: str
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str | None
    moved_at: datetime


def label(version: int | None) -> str:
    return "base" if version is None else registry.version_name(version)


def next_version(session: Session) -> int:
    """The number the next published adapter gets."""
    latest = session.execute(select(func.max(AdapterVersion.version))).scalar_one()
    return 1 if latest is None else int(latest) + 1


def register(session: Session, manifest: registry.Manifest) -> AdapterVersion:
    """Record a freshly published adapter as a candidate."""
    row = AdapterVersion(
        version=manifest.version,
        name=manifest.name,
        parent=manifest.parent,
        base_id=manifest.base.id,
        base_config_sha256=manifest.base.config_sha256,
        stage=manifest.stage,
        status="candidate",
        manifest=manifest.model_dump(mode="json"),
        created_at=manifest.created_at,
    )
    session.add(row)
    session.flush()
    return row


def production(session: Session) -> int | None:
    """The production version (None: the bare base model)."""
    return session.execute(
        select(ProductionPointer.version).where(ProductionPointer.id == 1)
    ).scalar_one()


def history(session: Session) -> list[Move]:
    """Every move of the pointer, oldest first."""
    rows = session.execute(select(ProductionMove).order_by(ProductionMove.id)).scalars()
    return [Move(r.kind, r.from_version, r.to_version, r.actor, r.reason, r.moved_at) for r in rows]


def production_stack(moves: list[Move]) -> list[int | None]:
    """The line of productions a rollback walks back through, base first.

    A promotion pushes; a rollback pops back to its target (or, when the target is not
    on the line, jumps there, which pushes it).
    """
    stack: list[int | None] = [BASE]
    for move in moves:
        if move.kind == "rollback" and move.to_version in stack:
            del stack[stack.index(move.to_version) + 1 :]
        else:
            stack.append(move.to_version)
    return stack


def check_target(session: Session, version: int, kind: Literal["promote", "rollback"]) -> None:
    """`AdapterStateError` unless `version` may become production by a move of `kind`:
    registered, not deleted, and (for a promotion) not rejected."""
    row = session.get(AdapterVersion, version)
    if row is None:
        raise AdapterStateError(f"{label(version)} is not a registered adapter version")
    if row.status == "deleted":
        raise AdapterStateError(f"{label(version)} was deleted by retention")
    if row.status == "rejected" and kind == "promote":
        raise AdapterStateError(
            f"{label(version)} was rejected ({row.status_reason}); roll back to it "
            "explicitly if you mean it"
        )


def move_production(
    engine: Engine,
    to_version: int | None,
    *,
    kind: Literal["promote", "rollback"],
    actor: str,
    reason: str | None,
    adapters_dir: Path,
    expect_from: int | Literal["any"] | None = "any",
) -> Move:
    """Point production at `to_version` (None: the base), atomically, and record the move.

    The target's folder is verified first (a tampered adapter never becomes production).
    With `expect_from`, the move only happens if production is still that version.
    """
    with session_scope(engine) as session:
        if to_version is not None:
            check_target(session, to_version, kind)
            registry.verify(registry.adapter_path(adapters_dir, to_version))
        check_fence(session)
        current = production(session)
        if expect_from != "any" and current != expect_from:
            raise AdapterStateError(
                f"production moved meanwhile: expected {label(expect_from)}, found {label(current)}"
            )
        now = utcnow()
        result = session.execute(
            update(ProductionPointer)
            .where(ProductionPointer.id == 1)
            .where(
                ProductionPointer.version.is_(None)
                if current is None
                else ProductionPointer.version == current
            )
            .values(version=to_version, moved_at=now)
        )
        if result.rowcount != 1:
            raise AdapterStateError("production moved meanwhile (concurrent move); try again")
        if to_version is not None and kind == "promote":
            session.get(AdapterVersion, to_version).status = "promoted"  # type: ignore[union-attr]
        session.add(
            ProductionMove(
                kind=kind,
                from_version=current,
                to_version=to_version,
                actor=actor,
                reason=reason,
                moved_at=now,
            )
        )
    global _moves_made_here
    _moves_made_here += 1
    return Move(kind, current, to_version, actor, reason, now)


def rollback_target(session: Session) -> int | None:
    """The previous production: one step back on the production line."""
    stack = production_stack(history(session))
    if len(stack) < 2:
        raise AdapterStateError("nothing to roll back to: production has never moved")
    return stack[-2]


def rollback(
    engine: Engine,
    adapters_dir: Path,
    *,
    to: int | Literal["previous"] | None = "previous",
    actor: str,
    reason: str | None = None,
    before_move: Callable[[int | None], None] | None = None,
) -> Move:
    """Move production back: to the previous production by default, or to `to` (None: base).

    `before_move` is called with the target once it is known to be a registered, live
    version (or the base) and before production moves, e.g. to have the model server load
    it (`daemon.adapter_serving.rollback_served`); an exception from it leaves production
    where it was.
    """
    with session_scope(engine) as session:
        current = production(session)
        target = rollback_target(session) if to == "previous" else to
        if target is not None:
            check_target(session, target, "rollback")
    if target == current:
        raise AdapterStateError(f"{label(target)} is production already")
    if before_move is not None:
        before_move(target)
    return move_production(
        engine,
        target,
        kind="rollback",
        actor=actor,
        reason=reason,
        adapters_dir=adapters_dir,
        expect_from=current,
    )


def mark(engine: Engine, version: int, status: str, reason: str | None = None) -> None:
    """Set a version's status (e.g. rejected by the gate, with the reason)."""
    with session_scope(engine) as session:
        row = session.get(AdapterVersion, version)
        if row is None:
            raise AdapterStateError(f"{label(version)} is not a registered adapter version")
        row.status = status
        row.status_reason = reason


def protected_versions(session: Session) -> set[int]:
    """Production and every ancestor of it (parent chain): what retention must keep."""
    keep: set[int] = set()
    version = production(session)
    while version is not None and version not in keep:
        keep.add(version)
        version = session.execute(
            select(AdapterVersion.parent).where(AdapterVersion.version == version)
        ).scalar_one_or_none()
    return keep


def prune(engine: Engine, adapters_dir: Path, keep_last: int) -> list[int]:
    """Delete the folders of versions beyond the newest `keep_last`, except production and its
    ancestors; their rows stay, marked deleted. Returns the versions deleted."""
    if keep_last < 0:
        raise ValueError("keep_last must be >= 0")
    with session_scope(engine) as session:
        live = list(
            session.execute(
                select(AdapterVersion.version)
                .where(AdapterVersion.status != "deleted")
                .order_by(AdapterVersion.version.desc())
            ).scalars()
        )
        keep = set(live[:keep_last]) | protected_versions(session)
        doomed = [v for v in live if v not in keep]
        for version in doomed:
            row = session.get(AdapterVersion, version)
            assert row is not None
            row.status = "deleted"
            row.status_reason = f"retention: beyond the newest {keep_last}"
    # Rows first, folders after: a crash in between leaves a folder marked deleted, which
    # the next prune removes; never a live row without its folder.
    for version in doomed:
        registry.delete(adapters_dir, version)
    registry.remove_partials(adapters_dir)
    return sorted(doomed)


def list_versions(session: Session) -> list[AdapterVersion]:
    return list(session.execute(select(AdapterVersion).order_by(AdapterVersion.version)).scalars())
