"""Which model is the policy: its base folder, its production adapter, its backends.

It resolves settings and the registry into things `stages/` and `judges/` take (a base
path, an `AdapterRef`, a generation backend). It does not generate or train.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from daemon import adapters
from daemon.home import Home, HomeError
from daemon.settings import Settings
from replay.db import session_scope
from stages import registry
from stages.generate.api import AdapterRef, GenerationBackend
from stages.generate.factory import make_backend

WORLD_BASE = Path("world") / "arith-base"


def uses_world(settings: Settings) -> bool:
    """Whether the policy is the embedded arith world's model (model.base left empty)."""
    return not settings.model.base


def base_model(home: Home, settings: Settings) -> str:
    """The base model: `model.base`, or the embedded world's bootstrapped model."""
    if settings.model.base:
        return settings.model.base
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
    if version is None:
        return None
    path = registry.adapter_path(home.adapters, version)
    registry.verify(path)
    return AdapterRef(name=registry.version_name(version), path=path)


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
    return make_backend(settings.judge.backend, settings.judge.base, **options)
