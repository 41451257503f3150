"""Whether the production adapter can be used, and what to do when it cannot.

`production_refusal` verifies production's folder (`stages.registry.verify`) and, when it
is refused, says why and which `tutord rollback --to ...` would help: the newest earlier
production on the line that still verifies, else the base. A failed cycle and `tutord
status` both give that message. This module moves nothing; `tutord rollback`
(`daemon/adapters.py`) does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from daemon import adapters
from replay.db import session_scope
from stages import registry


@dataclass(frozen=True)
class Refusal:
    """Production is refused: which version, why, and what to run."""

    version: int
    reason: str
    remedy: int | None
    """The version to roll back to (None: the base)."""

    def message(self) -> str:
        target = adapters.label(self.remedy)
        which = (
            "the base model"
            if self.remedy is None
            else "the newest earlier production that verifies"
        )
        rest = "" if self.remedy is None else " or `tutord rollback --to base`"
        return (
            f"production {adapters.label(self.version)} is refused: {self.reason}; run "
            f"`tutord rollback --to {target}` ({which}){rest}, then `tutord cycle` again"
        )


def _verifies(adapters_dir: Path, version: int) -> bool:
    try:
        registry.verify(registry.adapter_path(adapters_dir, version))
    except registry.RegistryError:
        return False
    return True


def production_refusal(engine: Engine, adapters_dir: Path) -> Refusal | None:
    """None when production is the base or its folder verifies; else what is wrong."""
    with session_scope(engine) as session:
        version = adapters.production(session)
        line = adapters.production_stack(adapters.history(session))
        deleted = {r.version for r in adapters.list_versions(session) if r.status == "deleted"}
    if version is None:
        return None
    try:
        registry.verify(registry.adapter_path(adapters_dir, version))
    except registry.RegistryError as exc:
        earlier = [v for v in reversed(line) if v is not None and v != version]
        remedy = next((v for v in earlier if v not in deleted and _verifies(adapters_dir, v)), None)
        return Refusal(version, str(exc), remedy)
    return None
