"""Settings: defaults, tutord.toml, TUTORD_* overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.home import Home, resolve_home
from daemon.settings import DEFAULT_CONFIG, SettingsError, load_settings


def test_defaults_without_a_file(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)
    assert settings.database_url is None
    assert settings.ingest.batch_size == 5000
    assert Home(tmp_path).database_url(settings) == f"sqlite:///{tmp_path / 'tutord.db'}"


def test_the_default_file_is_valid_and_says_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "tutord.toml").write_text(DEFAULT_CONFIG)
    assert load_settings(tmp_path) == load_settings(tmp_path / "nowhere")


def test_file_then_environment_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tutord.toml").write_text(
        'database_url = "sqlite:////tmp/x.db"\n[ingest]\nbatch_size = 10\nmax_line_bytes = 99\n'
    )
    monkeypatch.setenv("TUTORD_INGEST__BATCH_SIZE", "20")
    settings = load_settings(tmp_path)
    assert settings.ingest.batch_size == 20
    assert settings.ingest.max_line_bytes == 99
    assert settings.database_url == "sqlite:////tmp/x.db"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[ingest]\nbatch_size = 0\n", "key 'ingest.batch_size'"),
        ("[ingest]\nbatch_sise = 5\n", "key 'ingest.batch_sise'"),
        ("unknown_top = 1\n", "key 'unknown_top'"),
        ('[replay]\ncapacity = "lots"\n', "key 'replay.capacity'"),
        ("[ingest\n", "not valid TOML"),
    ],
)
def test_invalid_file_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "tutord.toml").write_text(text)
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path)
    assert needle in str(info.value)
    assert str(tmp_path / "tutord.toml") in str(info.value)


def test_invalid_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUTORD_INGEST__MAX_LINE_BYTES", "-1")
    with pytest.raises(SettingsError, match=r"TUTORD_INGEST__MAX_LINE_BYTES"):
        load_settings(tmp_path)


def test_home_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUTORD_HOME", str(tmp_path / "env"))
    assert resolve_home(tmp_path / "cli").root == tmp_path / "cli"
    assert resolve_home(None).root == tmp_path / "env"
    monkeypatch.delenv("TUTORD_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_home(None).root == tmp_path / ".local/share/tutord"
