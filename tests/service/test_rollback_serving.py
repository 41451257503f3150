"""A rollback has the model server load its target before production moves
(`daemon.adapter_serving.rollback_served`), through the library, `POST /v1/rollback` and
`tutord rollback`, against a fake OpenAI-compatible server that notes the production
pointer at the moment each request arrives. A server that refuses the load, does not
answer under the adapter's name, or does not answer at all fails the rollback and leaves
production where it was. Database tests run on SQLite and PostgreSQL (`db_engine`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from typer.testing import CliRunner

from daemon import adapters
from daemon.adapter_serving import ServingError, rollback_served
from daemon.cli import app
from daemon.home import Home
from daemon.service.api import make_app
from daemon.settings import Settings
from replay.db import make_engine, session_scope
from tests.fake_openai import FakeOpenAI, serving
from tests.registry_support import publish_version
from tests.server_support import free_port

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def production(engine: Engine) -> int | None:
    with session_scope(engine) as session:
        return adapters.production(session)


def moves(engine: Engine) -> list[tuple[str, int | None, int | None]]:
    with session_scope(engine) as session:
        return [(m.kind, m.from_version, m.to_version) for m in adapters.history(session)]


def promote_two(engine: Engine, home: Home, base: Path) -> None:
    """v1 then v2 published and promoted: production is v2, v1 one rollback away."""
    src = home.root.parent / "src"
    src.mkdir(exist_ok=True)
    (src / "adapter_config.json").write_text('{"r": 2}', encoding="utf-8")
    (src / "adapter_model.safetensors").write_bytes(b"weights")
    parent = None
    for _ in range(2):
        parent = publish_version(engine, home.adapters, src, base, parent)
        adapters.move_production(
            engine, parent, kind="promote", actor="test", reason="gate", adapters_dir=home.adapters
        )


@pytest.fixture
def fake(db_engine: Engine, base: Path) -> Iterator[tuple[FakeOpenAI, str]]:
    """The fake server; every request notes production as it stood when it arrived."""
    server = FakeOpenAI(str(base), observe=lambda: production(db_engine))
    with serving(server) as url:
        yield server, url


def settings_for(base: Path, url: str) -> Settings:
    return Settings(
        model={"base": str(base), "backend": "openai", "server_url": url},
        service={"api_token": TOKEN},
    )


def test_the_target_is_loaded_and_answers_before_production_moves(
    db_engine: Engine, home: Home, base: Path, fake: tuple[FakeOpenAI, str]
) -> None:
    server, url = fake
    promote_two(db_engine, home, base)
    move = rollback_served(
        db_engine, home, settings_for(base, url), actor="ops", reason="bad answers"
    )
    assert (move.from_version, move.to_version) == (2, 1)
    # Both requests arrived while production was still v2: load, then a request under v1.
    assert [(e.kind, e.name, e.seen) for e in server.events] == [
        ("load", "v1", 2),
        ("chat", "v1", 2),
    ]
    assert production(db_engine) == 1
    # The base needs nothing loaded: no request, and production moves.
    rollback_served(db_engine, home, settings_for(base, url), to=None, actor="ops")
    assert len(server.events) == 2 and production(db_engine) is None


@pytest.mark.parametrize("failure", ["refuses the load", "does not answer under the name"])
def test_a_server_that_fails_leaves_production_where_it_was(
    db_engine: Engine, home: Home, base: Path, fake: tuple[FakeOpenAI, str], failure: str
) -> None:
    server, url = fake
    server.refuse_loads = failure == "refuses the load"
    server.answer_adapters = failure != "does not answer under the name"
    promote_two(db_engine, home, base)
    before = moves(db_engine)
    with pytest.raises(ServingError) as refused:
        rollback_served(db_engine, home, settings_for(base, url), actor="ops")
    message = str(refused.value)
    assert "rollback to v1 refused" in message and "production was not moved" in message
    assert url in message
    assert ("HTTP 500" if server.refuse_loads else "HTTP 404") in message
    assert server.names("load") == ["v1"]
    assert production(db_engine) == 2 and moves(db_engine) == before


def test_no_server_configured_loads_nothing_and_moves(
    db_engine: Engine, home: Home, base: Path, fake: tuple[FakeOpenAI, str]
) -> None:
    server, url = fake
    promote_two(db_engine, home, base)
    local = Settings(model={"base": str(base), "backend": "transformers", "server_url": url})
    rollback_served(db_engine, home, local, actor="ops")
    assert server.events == [] and production(db_engine) == 1


def test_api_rollback_loads_first_and_answers_502_when_the_server_refuses(
    db_engine: Engine, home: Home, base: Path, fake: tuple[FakeOpenAI, str]
) -> None:
    server, url = fake
    promote_two(db_engine, home, base)
    client = TestClient(make_app(db_engine, home, settings_for(base, url)))
    server.refuse_loads = True
    refused = client.post("/v1/rollback", json={"to": "v1"}, headers=AUTH)
    assert refused.status_code == 502
    assert "production was not moved" in refused.json()["detail"]
    assert production(db_engine) == 2
    server.refuse_loads = False
    done = client.post("/v1/rollback", json={"to": "v1"}, headers=AUTH)
    assert done.status_code == 200 and done.json()["to"] == "v1"
    assert [(e.kind, e.name, e.seen) for e in server.events] == [
        ("load", "v1", 2),  # the refused one
        ("load", "v1", 2),
        ("chat", "v1", 2),
    ]
    assert production(db_engine) == 1
    # A version that is not registered is still a 409, and the server is not asked.
    assert client.post("/v1/rollback", json={"to": 9}, headers=AUTH).status_code == 409
    assert len(server.events) == 3


@pytest.mark.slow
def test_cli_rollback_with_a_server_that_does_not_answer(
    tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    root = tmp_path / "cli-home"
    assert runner.invoke(app, ["--home", str(root), "init"]).exit_code == 0
    engine = make_engine(f"sqlite:///{root / 'tutord.db'}")
    home = Home(root)
    promote_two(engine, home, base)
    monkeypatch.setenv("TUTORD_MODEL__BASE", str(base))
    monkeypatch.setenv("TUTORD_MODEL__BACKEND", "openai")

    # Nothing listens on the port: the client retries (about 3.5 s), then the rollback fails.
    monkeypatch.setenv("TUTORD_MODEL__SERVER_URL", f"http://127.0.0.1:{free_port()}")
    silent = runner.invoke(app, ["--home", str(root), "rollback"])
    assert silent.exit_code == 1, silent.output
    assert "rollback to v1 refused" in silent.output
    assert "production was not moved" in silent.output
    assert production(engine) == 2

    server = FakeOpenAI(str(base), observe=lambda: production(engine))
    with serving(server) as url:
        monkeypatch.setenv("TUTORD_MODEL__SERVER_URL", url)
        done = runner.invoke(app, ["--home", str(root), "rollback", "--reason", "smoke"])
    assert done.exit_code == 0, done.output
    assert "production: v2 -> v1" in done.output
    assert [(e.kind, e.name, e.seen) for e in server.events] == [
        ("load", "v1", 2),
        ("chat", "v1", 2),
    ]
    assert production(engine) == 1
    engine.dispose()
