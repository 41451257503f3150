"""Which model is the policy: its base folder, its production adapter, its backends.

It resolves settings and the registry into things `stages/` and `judges/` take (a base
path, an `AdapterRef`, a generation backend). It does not generate or train.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine

from daemon import adapters
from daemon.home import Home, HomeError
from daemon.model_store import resolve_model
from daemon.settings import Settings
from replay.db import session_scope
from stages import registry
from stages.generate.api import AdapterRef, GenerationBackend
from stages.generate.factory import make_backend

WORLD_BASE = Path("world") / "arith-base"


def task_packs(settings: Settings) -> list[str]:
    """The task packs in use: `task_packs`, else the embedded default (the world's model
    comes with the world's tasks; a model of your own comes with none)."""
    if settings.task_packs is not None:
        return list(settings.task_packs)
    return [] if settings.model.base else ["arith"]


def context_length(model: str) -> int | None:
    """The model's longest input in tokens (`max_position_embeddings` of a local folder's
    config.json), or None when it cannot be read without loading the model."""
    try:
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings")
    return value if isinstance(value, int) else None


def base_model(home: Home, settings: Settings) -> str:
    """The base model's folder: `model.base` (an imported name or a local folder), or the
    embedded world's bootstrapped model."""
    if settings.model.base:
        return resolve_model(home, settings.model.base)
    path = home.root / WORLD_BASE
    if not (path / "config.json").is_file():
        raise HomeError(
            f"the embedded world's base model is missing at {path}: run `tutord world bootstrap`"
        )
    return str(path)


def production_adapter(engine: Engine, home: Home) -> AdapterRef | None:
    """The production adapter (None: the bare base), verified on disk."""
    with session_scope(engine) as session:
        version = adapters.production(session)
    return adapter_ref(home, version)


def adapter_ref(home: Home, version: int | None) -> AdapterRef | None:
    """The adapter of a registry version (None: the bare base), verified on disk
    (`registry.verify`: a tampered, linked or pickle-holding folder is refused)."""
    if version is None:
        return None
    path = registry.adapter_path(home.adapters, version)
    registry.verify(path)
    return AdapterRef(registry.version_name(version), path)


def apply_threads(settings: Settings) -> None:
    """Use `model.threads` torch threads in this process, when set."""
    if settings.model.threads:
        import torch

        torch.set_num_threads(settings.model.threads)


def policy_backend(home: Home, settings: Settings) -> GenerationBackend:
    """A generation backend for the policy's base model, as configured."""
    apply_threads(settings)
    base = base_model(home, settings)
    options: dict[str, object] = {}
    if settings.model.backend == "openai":
        if not settings.model.server_url:
            raise HomeError("model.backend is 'openai' but model.server_url is not set")
        options["base_url"] = settings.model.server_url
    return make_backend(settings.model.backend, base, **options)


def judge_backend(home: Home, settings: Settings) -> GenerationBackend | None:
    """A separate judge backend, or None when the policy judges itself."""
    if not settings.judge.base:
        return None
    options: dict[str, object] = {}
    if settings.judge.backend == "openai":
        if not settings.judge.server_url:
            raise HomeError("judge.backend is 'openai' but judge.server_url is not set")
        options["base_url"] = settings.judge.server_url
    base = settings.judge.base
    if settings.judge.backend != "openai":
        base = resolve_model(home, base, "judge.base")
    return make_backend(settings.judge.backend, base, **options)
