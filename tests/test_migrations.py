"""Migrations: they build exactly the schema the models declare, and go down again."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

import daemon.models  # noqa: F401  (the daemon's tables)
from daemon import migrate
from replay.models import Base


def test_head_matches_the_models(db_engine: Engine) -> None:
    with db_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []
    assert migrate.current_revision(db_engine) == migrate.head_revision()


def test_downgrade_to_base_and_up_again(db_engine: Engine) -> None:
    cfg = migrate.alembic_config(db_engine.url.render_as_string(hide_password=False))
    with db_engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(inspect(db_engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(db_engine)
    assert "interactions" in inspect(db_engine).get_table_names()
