"""Adds training rows to the replay buffer and keeps each kind within its configured capacity.

The only place the daemon writes replay items; sampling and the buffer's mechanics are in
`replay/buffer.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine

from daemon.settings import Settings
from replay.buffer import NewReplayItem, add_items, evict


def remember(engine: Engine, settings: Settings, items: Sequence[NewReplayItem]) -> tuple[int, int]:
    """Add `items`, then evict down to `replay.capacity` in every kind touched.

    Returns (added, evicted).
    """
    added = add_items(engine, items)
    evicted = sum(
        evict(engine, kind, settings.replay.capacity)  # type: ignore[arg-type]
        for kind in sorted({item.kind for item in items})
    )
    return added, evicted
