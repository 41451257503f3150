"""The home folder of one tutord installation and where it is.

Resolution order: `--home DIR`, else `$TUTORD_HOME`, else `~/.local/share/tutord`.
A home holds `tutord.toml`, the SQLite database, and the folders `adapters/`,
`cycles/`, `models/` (imported base models), `reports/`, `spool/` and `quarantine/`. This
module lays the folders out; it does not touch the database (see `daemon/migrate.py`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from daemon.config_file import default_config
from daemon.settings import CONFIG_FILENAME, Settings, load_settings
from stages.atomic import write_atomic

HOME_ENV = "TUTORD_HOME"
DEFAULT_HOME = Path("~/.local/share/tutord")
SUBDIRS = ("adapters", "cycles", "models", "reports", "spool", "quarantine")
DB_FILENAME = "tutord.db"


class HomeError(Exception):
    """The home folder is missing, not a folder, or not initialized."""


@dataclass(frozen=True)
class Home:
    """Paths inside one home folder."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILENAME

    @property
    def db_path(self) -> Path:
        return self.root / DB_FILENAME

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def cycles(self) -> Path:
        return self.root / "cycles"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def default_database_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    def database_url(self, settings: Settings) -> str:
        return settings.database_url or self.default_database_url()

    def settings(self) -> Settings:
        return load_settings(self.root)

    def is_initialized(self) -> bool:
        return self.config_file.is_file()

    def require_initialized(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise HomeError(f"home {self.root} exists but is not a folder")
        if not self.is_initialized():
            raise HomeError(f"home {self.root} is not initialized; run `tutord init` first")

    def create(self) -> bool:
        """Create the folders and a commented default `tutord.toml`; True if the file was new."""
        if self.root.exists() and not self.root.is_dir():
            raise HomeError(f"home {self.root} exists but is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        for name in SUBDIRS:
            (self.root / name).mkdir(exist_ok=True)
        if self.config_file.exists():
            return False
        write_atomic(self.config_file, default_config())
        return True


def resolve_home(cli_home: Path | None) -> Home:
    """The home chosen by `--home`, else `$TUTORD_HOME`, else the default."""
    if cli_home is not None:
        raw = cli_home
    elif os.environ.get(HOME_ENV):
        raw = Path(os.environ[HOME_ENV])
    else:
        raw = DEFAULT_HOME
    return Home(raw.expanduser().resolve())
