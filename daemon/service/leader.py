"""One leader per database: who may run cycles, and the fence that stops a deposed one.

On a shared database (PostgreSQL) `LeaseLeadership` holds the `leader` row of `leases`:
holder, expiry in the database's own clock (so hosts' clocks do not matter) and a fencing
`token` that grows by one at every takeover. The leader renews at a third of the TTL (the
runner's main loop does this, also while a cycle step runs in a worker thread); a follower
takes the row over once it has expired. `install_fence` makes every write that matters
(moving the production pointer, advancing a cycle) first check, in its own transaction and
with the lease row locked, that this process still holds the lease under its token
(`daemon.lease.check_fence`): a leader that was paused, cut off or slow past its TTL
cannot promote after someone else took over.

On SQLite `FileLeadership` allows one `tutord run` per home: an exclusive `flock` on
`<home>/tutord.lock`, which names the holding process.

It does not run jobs (`daemon/service/runner.py`).
"""

from __future__ import annotations

import fcntl
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from daemon import lease
from daemon.models import Lease

log = logging.getLogger(__name__)

LEADER = "leader"
LOCK_FILE = "tutord.lock"


class Leadership(Protocol):
    holder: str

    @property
    def is_leader(self) -> bool: ...

    def try_acquire(self) -> bool:
        """Become (or stay) the leader if possible; True when this process leads."""
        ...

    def renew(self) -> bool:
        """Extend the lead; False when it was lost."""
        ...

    def release(self) -> None: ...

    def describe(self) -> str: ...


class AlreadyRunning(Exception):
    """Another `tutord run` holds this home."""


class FileLeadership:
    """One daemon per home on SQLite: an exclusive lock on `<home>/tutord.lock`."""

    def __init__(self, home_root: Path, holder: str) -> None:
        self.path = home_root / LOCK_FILE
        self.holder = holder
        self._fh: IO[str] | None = None

    @property
    def is_leader(self) -> bool:
        return self._fh is not None

    def try_acquire(self) -> bool:
        if self._fh is not None:
            return True
        fh = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            who = fh.read().strip() or "another process"
            fh.close()
            raise AlreadyRunning(
                f"{self.path} is locked by {who}: one `tutord run` per home on SQLite"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{self.holder}\n")
        fh.flush()
        self._fh = fh
        return True

    def renew(self) -> bool:
        return self._fh is not None

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def describe(self) -> str:
        return f"lock file {self.path}"


class LeaseLeadership:
    """The `leader` lease on a shared database, with a fencing token."""

    def __init__(self, engine: Engine, holder: str, ttl: timedelta) -> None:
        self.engine = engine
        self.holder = holder
        self.ttl = ttl
        self.token: int | None = None

    @property
    def is_leader(self) -> bool:
        return self.token is not None

    def try_acquire(self) -> bool:
        try:
            return self._acquire()
        except SQLAlchemyError as exc:
            log.warning("leader lease: the database failed: %s", exc)
            self._lose("the database failed")
            return False

    def _acquire(self) -> bool:
        with self.engine.begin() as conn:
            self._bound_waits(conn)
            now = lease.db_now(conn)
            row = conn.execute(
                select(Lease.acquired_by, Lease.acquired_until, Lease.token)
                .where(Lease.name == LEADER)
                .with_for_update()
            ).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(Lease).values(
                                name=LEADER,
                                acquired_by=self.holder,
                                acquired_until=now + self.ttl,
                                acquired_at=now,
                                token=1,
                            )
                        )
                except IntegrityError:
                    return False
                self._won(1)
                return True
            if row.acquired_by == self.holder and row.token == self.token:
                conn.execute(
                    update(Lease)
                    .where(Lease.name == LEADER, Lease.token == row.token)
                    .values(acquired_until=now + self.ttl)
                )
                return True
            if row.acquired_until > now:
                self._lose(f"held by {row.acquired_by}")
                return False
            token = row.token + 1
            taken = conn.execute(
                update(Lease)
                .where(Lease.name == LEADER, Lease.token == row.token)
                .values(
                    acquired_by=self.holder,
                    acquired_until=now + self.ttl,
                    acquired_at=now,
                    token=token,
                )
            ).rowcount
            if taken != 1:
                return False
            log.warning("took over the leader lease from %s (token %d)", row.acquired_by, token)
            self._won(token)
            return True

    def _bound_waits(self, conn: Connection) -> None:
        """A stalled holder (SIGSTOP in a transaction) must not hang us: lock waits end."""
        if conn.dialect.name == "postgresql":
            ms = max(100, int(self.ttl.total_seconds() * 1000 / 3))
            conn.execute(text(f"SET LOCAL lock_timeout = {ms}"))

    def renew(self) -> bool:
        if self.token is None:
            return False
        try:
            with self.engine.begin() as conn:
                self._bound_waits(conn)
                now = lease.db_now(conn)
                done = conn.execute(
                    update(Lease)
                    .where(
                        Lease.name == LEADER,
                        Lease.acquired_by == self.holder,
                        Lease.token == self.token,
                    )
                    .values(acquired_until=now + self.ttl)
                ).rowcount
        except SQLAlchemyError as exc:
            log.warning("leader lease: renewal failed: %s", exc)
            return self._still_valid()
        if done != 1:
            self._lose("another process took the lease over")
            return False
        self.valid_until = datetime.now().timestamp() + self.ttl.total_seconds()
        return True

    def _still_valid(self) -> bool:
        """After a failed renewal: lead on until our own last renewal's expiry (the fence
        stops any write after a takeover regardless)."""
        if datetime.now().timestamp() < getattr(self, "valid_until", 0.0):
            return True
        self._lose("could not renew before the lease expired")
        return False

    def _won(self, token: int) -> None:
        self.token = token
        self.valid_until = datetime.now().timestamp() + self.ttl.total_seconds()
        lease.set_fence(lease.Fence(LEADER, self.holder, token))

    def _lose(self, why: str) -> None:
        if self.token is not None:
            log.warning("no longer the leader: %s", why)
        self.token = None
        # The fence stays installed with the old token: writes in flight are refused.

    def release(self) -> None:
        if self.token is None:
            return
        try:
            lease.release_token(self.engine, LEADER, self.holder, self.token)
        except SQLAlchemyError as exc:
            log.warning("leader lease: release failed (it expires by itself): %s", exc)
        self.token = None

    def describe(self) -> str:
        return f"leader lease (token {self.token})" if self.token else "follower"


def leadership_for(engine: Engine, home_root: Path, holder: str, ttl: timedelta) -> Leadership:
    """A lock file on SQLite, the leader lease on any other database."""
    if engine.dialect.name == "sqlite":
        return FileLeadership(home_root, holder)
    return LeaseLeadership(engine, holder, ttl)
