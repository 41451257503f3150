"""Has the configured OpenAI-compatible model server serve a registry adapter.

`serve_adapter` verifies the adapter's folder, has the server (`model.server_url`, backend
'openai') load it under its version name (`v3`) and checks that it answers a request
addressed to that name: a cycle calls it before production (and the proxy's alias) moves to
the adapter, so no request goes to a name the server does not know. With another backend,
or no server URL, it does nothing.

It does not move production or record anything (`daemon/cycle.py` and `daemon/adapters.py`
do), and it starts no server. The HTTP client is imported only when a server is configured.
"""

from __future__ import annotations

from daemon.home import Home
from daemon.policy import base_model
from daemon.settings import Settings
from stages import registry
from stages.generate.api import AdapterRef, SamplingParams


def serve_adapter(home: Home, settings: Settings, version: int) -> None:
    """Load an adapter about to be promoted into the configured OpenAI-compatible server and
    check that it answers with it."""
    if settings.model.backend != "openai" or not settings.model.server_url:
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
