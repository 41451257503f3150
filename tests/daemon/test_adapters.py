"""Adapter versions in the database: promotion, rollback, history, retention (both backends)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from daemon import adapters
from daemon.adapters import AdapterStateError
from daemon.cli import app
from daemon.home import Home
from replay.db import make_engine, session_scope
from stages import registry


def add_version(
    engine: Engine, reg: Path, src: Path, base: registry.BaseIdentity, parent: int | None
) -> int:
    with session_scope(engine) as session:
        version = adapters.next_version(session)
        manifest = registry.publish(
            src, reg, version=version, parent=parent, base=base, stage="sft"
        )
        adapters.register(session, manifest)
    return version


@pytest.fixture
def chain(
    db_engine: Engine, tmp_path: Path, tiny_base_and_adapter: tuple[Path, Path]
) -> tuple[Engine, Path, list[int]]:
    """v1 <- v2 <- v3, each promoted in turn."""
    base, src = tiny_base_and_adapter
    ident = registry.base_identity(base)
    reg = tmp_path / "adapters"
    versions: list[int] = []
    parent = None
    for _ in range(3):
        v = add_version(db_engine, reg, src, ident, parent)
        adapters.move_production(
            db_engine, v, kind="promote", actor="test", reason="gate passed", adapters_dir=reg
        )
        versions.append(v)
        parent = v
    return db_engine, reg, versions


def prod(engine: Engine) -> int | None:
    with session_scope(engine) as session:
        return adapters.production(session)


def test_promotions_move_the_pointer_and_are_recorded(
    chain: tuple[Engine, Path, list[int]],
) -> None:
    engine, _, versions = chain
    assert versions == [1, 2, 3]
    assert prod(engine) == 3
    with session_scope(engine) as session:
        moves = adapters.history(session)
        statuses = {r.version: r.status for r in adapters.list_versions(session)}
    assert [(m.kind, m.from_version, m.to_version) for m in moves] == [
        ("promote", None, 1),
        ("promote", 1, 2),
        ("promote", 2, 3),
    ]
    assert all(m.actor == "test" and m.reason == "gate passed" for m in moves)
    assert statuses == {1: "promoted", 2: "promoted", 3: "promoted"}


def test_rollback_walks_back_one_step_at_a_time_down_to_base(
    chain: tuple[Engine, Path, list[int]],
) -> None:
    engine, reg, _ = chain
    for expected in (2, 1, None):
        move = adapters.rollback(engine, reg, actor="ops", reason="bad outputs")
        assert (move.kind, move.to_version) == ("rollback", expected)
        assert prod(engine) == expected
    with pytest.raises(AdapterStateError, match="nothing to roll back"):
        adapters.rollback(engine, reg, actor="ops")
    with session_scope(engine) as session:
        last = adapters.history(session)[-1]
    assert (last.from_version, last.to_version, last.actor, last.reason) == (
        1,
        None,
        "ops",
        "bad outputs",
    )


def test_rollback_to_a_named_version_and_refusals(chain: tuple[Engine, Path, list[int]]) -> None:
    engine, reg, _ = chain
    adapters.rollback(engine, reg, to=1, actor="ops")
    assert prod(engine) == 1
    with pytest.raises(AdapterStateError, match="production already"):
        adapters.rollback(engine, reg, to=1, actor="ops")
    with pytest.raises(AdapterStateError, match="not a registered"):
        adapters.move_production(
            engine, 9, kind="promote", actor="t", reason=None, adapters_dir=reg
        )


def test_a_tampered_adapter_never_becomes_production(chain: tuple[Engine, Path, list[int]]) -> None:
    engine, reg, _ = chain
    weights = reg / "v2" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(registry.RegistryError):
        adapters.rollback(engine, reg, actor="ops")
    assert prod(engine) == 3


def test_compare_and_set_refuses_a_stale_move(chain: tuple[Engine, Path, list[int]]) -> None:
    engine, reg, _ = chain
    with pytest.raises(AdapterStateError, match="moved meanwhile"):
        adapters.move_production(
            engine, 1, kind="rollback", actor="t", reason=None, adapters_dir=reg, expect_from=2
        )
    assert prod(engine) == 3


def test_rejected_candidates_are_not_promoted(
    chain: tuple[Engine, Path, list[int]], tiny_base_and_adapter: tuple[Path, Path]
) -> None:
    engine, reg, _ = chain
    v = add_version(
        engine, reg, tiny_base_and_adapter[1], registry.base_identity(tiny_base_and_adapter[0]), 3
    )
    adapters.mark(engine, v, "rejected", "regressed on add")
    with pytest.raises(AdapterStateError, match="regressed on add"):
        adapters.move_production(
            engine, v, kind="promote", actor="t", reason=None, adapters_dir=reg
        )


def test_retention_keeps_production_and_its_ancestors(
    chain: tuple[Engine, Path, list[int]], tiny_base_and_adapter: tuple[Path, Path]
) -> None:
    engine, reg, _ = chain
    ident = registry.base_identity(tiny_base_and_adapter[0])
    # Production is v3 (line v1 <- v2 <- v3); add four unpromoted side versions.
    side = [add_version(engine, reg, tiny_base_and_adapter[1], ident, 3) for _ in range(4)]
    assert side == [4, 5, 6, 7]
    deleted = adapters.prune(engine, reg, keep_last=2)
    assert deleted == [4, 5]
    assert registry.list_versions(reg) == [1, 2, 3, 6, 7]
    deleted = adapters.prune(engine, reg, keep_last=1)
    assert deleted == [6]
    assert registry.list_versions(reg) == [1, 2, 3, 7]
    with session_scope(engine) as session:
        assert adapters.protected_versions(session) == {1, 2, 3}
        statuses = {r.version: r.status for r in adapters.list_versions(session)}
    assert [v for v, s in statuses.items() if s == "deleted"] == [4, 5, 6]
    with pytest.raises(AdapterStateError, match="deleted"):
        adapters.rollback(engine, reg, to=4, actor="ops")


def test_cli_list_show_rollback(tmp_path: Path, tiny_base_and_adapter: tuple[Path, Path]) -> None:
    runner = CliRunner()
    home = tmp_path / "home"
    assert runner.invoke(app, ["--home", str(home), "init"]).exit_code == 0
    h = Home(home)
    engine = make_engine(h.default_database_url())
    ident = registry.base_identity(tiny_base_and_adapter[0])
    for parent in (None, 1):
        v = add_version(engine, h.adapters, tiny_base_and_adapter[1], ident, parent)
        adapters.move_production(
            engine, v, kind="promote", actor="t", reason=None, adapters_dir=h.adapters
        )

    def tutord(*args: str) -> tuple[int, str, str]:
        r = runner.invoke(app, ["--home", str(home), *args])
        return r.exit_code, r.stdout, r.stderr

    code, out, _ = tutord("adapters", "list")
    assert code == 0 and "production: v2" in out and "* v2" in out
    code, out, _ = tutord("adapters", "show", "v1")
    assert code == 0 and '"name": "v1"' in out
    code, out, _ = tutord("rollback", "--reason", "smoke test")
    assert code == 0 and "v2 -> v1" in out
    code, out, _ = tutord("status", "--json")
    assert '"production": "v1"' in out
    code, out, _ = tutord("rollback", "--to", "base")
    assert code == 0 and "v1 -> base" in out
    code, _, err = tutord("rollback", "--to", "../etc")
    assert code == 2 and "not an adapter version name" in err
    code, _, err = tutord("rollback", "--to", "v9")
    assert code == 1 and "v9" in err
    engine.dispose()
