"""Every unusable setting stops `tutord` with exit status 2 and a message naming the key
(or the path), never a traceback: environment JSON, database URLs, unreadable files, homes.

The commands run as real subprocesses (`tests/cli_support.py`), so what is asserted is what
a user sees on the terminal.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from daemon.home import Home
from daemon.settings import SettingsError, load_settings
from tests.cli_support import run_tutord

EXIT_USAGE = 2


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home with its folders and default `tutord.toml` (settings are read before the
    database is opened, so no migration is needed for these errors)."""
    Home(tmp_path / "home").create()
    return tmp_path / "home"


def assert_clean_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, one `error:` message holding every needle, and no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == EXIT_USAGE, output
    assert "Traceback" not in output and "╭" not in output, output  # no (rich) traceback
    assert "error:" in result.stderr, output
    for needle in needles:
        assert needle in result.stderr, (needle, output)


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("TUTORD_INGEST", "{bad", "ingest"),
        ("TUTORD_TRAIN__SFT", "{bad", "train.sft"),
        ("TUTORD_GATE__TARGET_TASKS", "[add", "gate.target_tasks"),
    ],
)
def test_bad_json_in_the_environment_names_the_variable(
    home: Path, variable: str, value: str, key: str
) -> None:
    result = run_tutord(home, "status", env={variable: value})
    assert_clean_exit_2(result, f"'{key}'", f"${variable}", "JSON")


@pytest.mark.parametrize("url", ["garbage", "://nothing", "sqlite//x.db"])
def test_a_database_url_that_is_no_url_names_the_key(home: Path, url: str) -> None:
    result = run_tutord(home, "status", env={"TUTORD_DATABASE_URL": url})
    assert_clean_exit_2(result, "'database_url'", "$TUTORD_DATABASE_URL", "not a database URL")


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("mysql://user@localhost/tutord", "mysql"),
        ("mssql+pyodbc://user@dsn", "mssql"),
        ("postgresql+nosuchdriver://user@localhost/tutord", "nosuchdriver"),
    ],
)
def test_an_unsupported_database_says_which_are_supported(home: Path, url: str, named: str) -> None:
    result = run_tutord(home, "status", env={"TUTORD_DATABASE_URL": url})
    assert_clean_exit_2(result, "'database_url'", named, "sqlite", "postgresql+psycopg")


def test_an_unsupported_database_in_the_file_names_the_file(home: Path) -> None:
    config = home / "tutord.toml"
    config.write_text('database_url = "mysql://user@localhost/tutord"\n', encoding="utf-8")
    result = run_tutord(home, "status")
    assert_clean_exit_2(result, "'database_url'", str(config), "mysql")


def test_init_with_a_home_under_a_file_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder\n", encoding="utf-8")
    result = run_tutord(blocker / "home", "init")
    assert_clean_exit_2(result, str(blocker / "home"), f"{blocker} is not a folder")
    assert blocker.read_text(encoding="utf-8") == "not a folder\n"  # left alone


def test_init_with_a_home_subfolder_taken_by_a_file_names_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "adapters").write_text("in the way\n", encoding="utf-8")
    result = run_tutord(home, "init")
    assert_clean_exit_2(result, str(home / "adapters"))


def test_an_unreadable_config_file_names_it(home: Path) -> None:
    config = home / "tutord.toml"
    config.unlink()
    config.mkdir()  # a folder where the file should be
    result = run_tutord(home, "status")
    assert_clean_exit_2(result, str(config))


def test_settings_errors_are_settings_errors_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library raises `SettingsError` (what the CLI turns into exit 2), not pydantic's
    or SQLAlchemy's own exceptions."""
    monkeypatch.setenv("TUTORD_INGEST", "{bad")
    with pytest.raises(SettingsError, match=r"key 'ingest' \(\$TUTORD_INGEST\)"):
        load_settings(tmp_path)
    monkeypatch.delenv("TUTORD_INGEST")
    monkeypatch.setenv("TUTORD_DATABASE_URL", "mysql://u@h/db")
    with pytest.raises(SettingsError, match="key 'database_url'"):
        load_settings(tmp_path)
    monkeypatch.setenv("TUTORD_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    assert load_settings(tmp_path).database_url == f"sqlite:///{tmp_path / 'x.db'}"
