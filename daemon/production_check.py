"""Whether the production adapter can be used, and what to do when it cannot.

`production_refusal` verifies production's folder (`stages.registry.verify`) and, when it
is refused, says why and which `tutord rollback --to ...` would help: the newest earlier
production on the line that still verifies, else the base. A failed cycle and `tutord
status` both give that message; `refused_reason` is the reason a cycle step that met a
refused adapter fails with. `lora_shape_problem` says why a stage's configured LoRA shape
cannot continue production's adapter. This module moves nothing; `tutord rollback`
(`daemon/adapters.py`) does, and it does not fail or record a cycle (`daemon/cycle.py`
does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from daemon import adapters
from daemon.home import Home
from daemon.policy import production_adapter
from daemon.settings import Settings
from replay.db import session_scope
from stages import registry
from stages.configs import STAGE_CONFIGS, StageConfig
from stages.policy import parent_lora_problem


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


def refused_reason(engine: Engine, adapters_dir: Path, step: str, exc: Exception) -> str:
    """Why a cycle step that met an adapter the registry refuses (tampered, linked,
    pickle-based) fails: production's refusal with what to run when production's is the
    one refused, else the step and the registry's reason."""
    refusal = production_refusal(engine, adapters_dir)
    return refusal.message() if refusal else f"{step}: adapter refused: {exc}"


def lora_shape_problem(
    engine: Engine, home: Home, settings: Settings, stage: str | None
) -> str | None:
    """Why `[train.<stage>]`'s LoRA shape cannot continue the production adapter, which keeps
    its own (a stage would refuse it; None when they agree or there is no adapter)."""
    parent = production_adapter(engine, home)
    if parent is None or stage not in STAGE_CONFIGS:
        return None
    configured: StageConfig = getattr(settings.train, stage)
    return parent_lora_problem(
        parent.path,
        r=configured.lora_r,
        alpha=configured.lora_alpha,
        target_modules=configured.target_modules,
        prefix=f"train.{stage}.",
    )
