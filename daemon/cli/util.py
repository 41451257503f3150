"""Helpers shared by tutord's CLI modules: the command context, consoles, error exits.

It holds no commands itself (see `daemon/cli/__init__.py` and its command modules).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from daemon import migrate
from daemon.adapters import AdapterStateError
from daemon.home import Home, HomeError
from daemon.settings import CONFIG_FILENAME, ENV_PREFIX, Settings, SettingsError
from replay.db import DatabaseURLError, make_engine
from stages.registry import RegistryError

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Context:
    """What every command needs: the home folder, its settings, an engine."""

    home: Home
    _settings: Settings | None = None
    _engine: Engine | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = self.home.settings()
        return self._settings

    @property
    def database_url(self) -> str:
        return self.home.database_url(self.settings)

    @property
    def engine(self) -> Engine:
        """The database's engine; a URL it cannot use (e.g. its driver is not installed) is
        a `SettingsError` naming the key `database_url`."""
        if self._engine is None:
            try:
                self._engine = make_engine(self.database_url)
            except DatabaseURLError as exc:
                where = f"in {self.home.root / CONFIG_FILENAME} or ${ENV_PREFIX}DATABASE_URL"
                raise SettingsError(f"key 'database_url' ({where}): {exc}") from exc
        return self._engine


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True)
    raise typer.Exit(code)


def guard(fn: Callable[[], Any]) -> Any:
    """Turn setup problems into a one-line error and exit status 2 (a refused operation:
    1). Messages are printed as they are, never read as markup."""
    try:
        return fn()
    except (HomeError, SettingsError) as exc:
        fail(escape(str(exc)))
    except OperationalError as exc:
        fail(escape(f"cannot use the database: {exc.orig}"))
    except (RegistryError, AdapterStateError, FileExistsError) as exc:
        # e.g. a model server's answer quoted in the message: text, not markup
        fail(escape(str(exc)), EXIT_REFUSED)


def ready(ctx: typer.Context) -> Context:
    """The context of an initialized home whose database is at the newest migration."""
    c: Context = ctx.obj

    def check() -> Context:
        c.home.require_initialized()
        current = migrate.current_revision(c.engine)
        head = migrate.head_revision()
        if current != head:
            raise HomeError(
                f"the database is at revision {current or 'none'} but this tutord needs {head}; "
                "run `tutord db upgrade`"
            )
        return c

    return guard(check)
