"""For tests that need adapter versions in a home's registry without training one."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from daemon import adapters
from replay.db import session_scope
from stages import registry


def publish_version(
    engine: Engine, home_adapters: Path, source: Path, base: str | Path, parent: int | None = None
) -> int:
    """Publish the adapter folder `source` as the next version of the registry in
    `home_adapters` (for the base folder `base`) and register it; returns its number."""
    with session_scope(engine) as session:
        version = adapters.next_version(session)
        manifest = registry.publish(
            source,
            home_adapters,
            version=version,
            parent=parent,
            base=registry.base_identity(base),
            stage="sft",
        )
        adapters.register(session, manifest)
    return version
