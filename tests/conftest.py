"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, and a home folder.

`db_engine` is parametrized over both backends, so every test that takes it runs on
SQLite and on PostgreSQL (marked `postgres`; deselect with `-m 'not postgres'`).
PostgreSQL tests get a schema of their own in the `test` database, dropped afterwards.
Without a reachable server they skip locally and fail under CI (CI=true).
"""

from __future__ import annotations

import os
import uuid

# Two pytest workers share two cores: one torch thread each. More threads than cores
# make OpenMP spin against each other (measured: a 40x slowdown of tiny-model generation).
os.environ.setdefault("OMP_NUM_THREADS", "1")
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from daemon import migrate
from replay.db import make_engine

PG_URL = os.environ.get("TUTORD_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `longest` first: under `-n 2` the one that rebuilds the shipped base
    (about 12 minutes) then runs beside the rest instead of alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)


def _pg_admin_engine() -> Engine:
    engine = make_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # the server is missing or refuses us
        engine.dispose()
        message = f"PostgreSQL not reachable at {PG_URL}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return engine


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'tutord.db'}")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose connections use a fresh, empty schema of their own."""
    admin = _pg_admin_engine()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_engine(request: pytest.FixtureRequest) -> Engine:
    """A migrated, empty database: once on SQLite, once on PostgreSQL."""
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    return request.getfixturevalue(name)


@pytest.fixture(scope="session")
def tiny_base_and_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random Llama saved as a base model folder, and a LoRA adapter for it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(root / "base")
    peft_model = get_peft_model(
        model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    )
    peft_model.save_pretrained(root / "adapter")
    return root / "base", root / "adapter"
