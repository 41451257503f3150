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
        self._require_config_file()
        if not self.is_initialized():
            raise HomeError(f"home {self.root} is not initialized; run `tutord init` first")

    def _require_config_file(self) -> None:
        """A `tutord.toml` that exists but is not a file (a folder, a dangling link) is an
        error naming it, not a home to initialize."""
        path = self.config_file
        if (path.exists() or path.is_symlink()) and not path.is_file():
            raise HomeError(f"{path} exists but is not a file: move it away")

    def create(self) -> bool:
        """Create the folders and a commented default `tutord.toml`; True if the file was new.

        A path that cannot be a folder (a file in the way, no permission) is a `HomeError`
        naming it."""
        if self.root.exists() and not self.root.is_dir():
            raise HomeError(f"home {self.root} exists but is not a folder")
        _make_folder(self.root, f"home {self.root}")
        for name in SUBDIRS:
            _make_folder(self.root / name, f"home folder {self.root / name}")
        self._require_config_file()
        if self.config_file.exists():
            return False
        try:
            write_atomic(self.config_file, default_config())
        except OSError as exc:
            raise HomeError(f"cannot write {self.config_file}: {exc.strerror}") from exc
        return True


def _blocking_file(path: Path) -> Path | None:
    """The nearest ancestor of `path` that exists and is not a folder, if any."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
        if parent.is_symlink():  # a dangling link: nothing can be created under it
            return parent
    return None


def _make_folder(path: Path, what: str) -> None:
    """`mkdir -p path`, or a `HomeError` that says what is in the way."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise HomeError(f"{what} exists but is not a folder") from exc
    except NotADirectoryError as exc:
        blocker = _blocking_file(path)
        where = f"{blocker} is not a folder" if blocker else str(exc.strerror)
        raise HomeError(f"cannot create {what}: {where}") from exc
    except OSError as exc:
        raise HomeError(f"cannot create {what}: {exc.strerror}") from exc


def resolve_home(cli_home: Path | None) -> Home:
    """The home chosen by `--home`, else `$TUTORD_HOME`, else the default; `HomeError` when
    the path cannot be resolved (an unknown `~user`, a symlink loop)."""
    if cli_home is not None:
        raw = cli_home
    elif os.environ.get(HOME_ENV):
        raw = Path(os.environ[HOME_ENV])
    else:
        raw = DEFAULT_HOME
    try:
        return Home(raw.expanduser().resolve())
    except (RuntimeError, OSError) as exc:
        raise HomeError(f"home {raw}: cannot resolve the path: {exc}") from exc
