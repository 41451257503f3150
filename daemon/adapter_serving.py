"""Has the configured OpenAI-compatible model server serve a registry adapter.

`serve_adapter` verifies the adapter's folder, has the server (`model.server_url`, backend
'openai') load it under its version name (`v3`) and checks that it answers a request
addressed to that name: a cycle calls it before production (and the proxy's alias) moves to
the adapter, so no request goes to a name the server does not know. `rollback_served` does
the same for a rollback (`tutord rollback`, `POST /v1/rollback`): the target is loaded and
answers before production moves back to it, and when the server refuses or does not answer
the rollback fails with `ServingError` and production stays where it was (the base needs
nothing loaded). With another backend, or no server URL, nothing is loaded.

It does not move production or record anything itself (`daemon/cycle.py` and
`daemon/adapters.py` do), and it starts no server. The HTTP client is imported only when a
server is configured.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import Engine

from daemon import adapters
from daemon.home import Home
from daemon.policy import base_model
from daemon.settings import Settings
from stages import registry
from stages.generate.api import AdapterRef, SamplingParams


class ServingError(adapters.AdapterStateError):
    """The model server did not load an adapter, or did not answer under its name, so
    production was not moved to it."""


def serves_adapters(settings: Settings) -> bool:
    """Whether production moves must first have the model server load the adapter."""
    return settings.model.backend == "openai" and bool(settings.model.server_url)


def serve_adapter(home: Home, settings: Settings, version: int) -> None:
    """Load an adapter about to be promoted into the configured OpenAI-compatible server and
    check that it answers with it."""
    if not serves_adapters(settings):
        return
    from stages.generate.openai_http import OpenAIBackend

    client = OpenAIBackend(base_model(home, settings), base_url=settings.model.server_url)
    name = registry.version_name(version)
    path = registry.adapter_path(home.adapters, version)
    try:
        registry.verify(path)  # the server loads what the folder holds, pickles included
        client.load_adapter(name, path)
        # It must answer under that name before production (and the proxy) moves to it.
        client.generate(
            [[{"role": "user", "content": "ping"}]],
            SamplingParams(max_new_tokens=1),
            adapter=AdapterRef(name, path),
        )
    finally:
        client.close()


def rollback_served(
    engine: Engine,
    home: Home,
    settings: Settings,
    *,
    to: int | Literal["previous"] | None = "previous",
    actor: str,
    reason: str | None = None,
) -> adapters.Move:
    """`daemon.adapters.rollback`, with the target loaded into the model server and answering
    under its name before production moves (nothing to load for the base). `ServingError`
    when the server refuses or does not answer: production is not moved."""

    def load(version: int | None) -> None:
        if version is None or not serves_adapters(settings):
            return
        from stages.generate.openai_http import BackendError

        try:
            serve_adapter(home, settings, version)
        except BackendError as exc:
            raise ServingError(
                f"rollback to {adapters.label(version)} refused: the model server at "
                f"{settings.model.server_url} did not load it and answer under its name "
                f"({exc}); production was not moved"
            ) from exc

    return adapters.rollback(
        engine, home.adapters, to=to, actor=actor, reason=reason, before_move=load
    )
