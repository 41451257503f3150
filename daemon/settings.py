"""tutord's settings: a pydantic-settings model read from `tutord.toml` in the home folder.

Precedence, highest first: values passed in code, `TUTORD_*` environment variables
(nested keys joined by `__`, e.g. `TUTORD_INGEST__BATCH_SIZE`), `tutord.toml`, defaults.
Unknown keys and bad values raise `SettingsError`, whose message names the key.
This module does not create the home folder (see `daemon/home.py`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILENAME = "tutord.toml"
ENV_PREFIX = "TUTORD_"


class SettingsError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


class IngestSettings(BaseModel):
    """How interaction logs are read."""

    model_config = ConfigDict(extra="forbid")

    max_line_bytes: int = Field(
        1_048_576,
        gt=0,
        description="Longest accepted JSONL line in bytes; longer ones are rejected.",
    )
    batch_size: int = Field(5_000, gt=0, description="Records written per database transaction.")
    default_source: str = Field(
        "default",
        min_length=1,
        max_length=200,
        description="Source when --source is not given.",
    )


class ReplaySettings(BaseModel):
    """The replay buffer of earlier training data."""

    model_config = ConfigDict(extra="forbid")

    capacity: int = Field(
        200_000,
        gt=0,
        description="Most items kept per kind (sft, pair, prompt).",
    )
    min_per_task: int = Field(
        100, ge=0, description="Eviction never takes a task below this many items of a kind."
    )


class AdapterSettings(BaseModel):
    """The adapter registry."""

    model_config = ConfigDict(extra="forbid")

    keep_last: int = Field(
        10, ge=1, description="Adapter versions kept by retention, besides production's line."
    )


class Settings(BaseSettings):
    """Everything configurable about one tutord installation."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file tutord.db in the home folder."
    )
    ingest: IngestSettings = IngestSettings()
    replay: ReplaySettings = ReplaySettings()
    adapters: AdapterSettings = AdapterSettings()

    toml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_file))
        return tuple(sources)


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def load_settings(home: Path, **overrides: Any) -> Settings:
    """Read `home/tutord.toml` (if present) and the environment into a `Settings`."""
    path = home / CONFIG_FILENAME
    toml_file: Path | None = None
    if path.exists():
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise SettingsError(f"{path}: not UTF-8 text: {exc}") from exc
        toml_file = path

    class _FromFile(Settings):
        pass

    _FromFile.toml_file = toml_file

    try:
        loaded = _FromFile(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = _location(err["loc"])
            env = ENV_PREFIX + key.upper().replace(".", "__")
            problems.append(f"key '{key}' (in {path} or ${env}): {err['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from exc
    return Settings.model_validate(loaded.model_dump())


DEFAULT_CONFIG = """\
# tutord configuration. Every key is optional; the values shown are the defaults.
# Environment variables override this file: TUTORD_<KEY>, nested keys joined by "__",
# e.g. TUTORD_DATABASE_URL or TUTORD_INGEST__BATCH_SIZE.

# SQLAlchemy URL of the database. Default: SQLite file tutord.db in this folder.
# database_url = "postgresql+psycopg://user@127.0.0.1:5432/tutord"

[ingest]
# Longest accepted JSONL line in bytes; longer lines go to quarantine/.
max_line_bytes = 1048576
# Records written per database transaction.
batch_size = 5000
# Source name recorded when `tutord ingest` is given no --source.
default_source = "default"

[replay]
# Most replay items kept per kind (sft, pair, prompt); the oldest of the largest tasks go first.
capacity = 200000
# Eviction never takes a task below this many items of a kind.
min_per_task = 100

[adapters]
# Adapter versions kept by `tutord adapters prune` (production and its ancestors always are).
keep_last = 10
"""
