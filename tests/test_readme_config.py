"""The README's configuration table against the code: every key it lists is declared in
the settings, and every key is read somewhere outside its declaration (a key nothing reads
would be a setting that does nothing)."""

from __future__ import annotations

import re
from pathlib import Path

from daemon.config_file import keys
from daemon.task_settings import TaskSettings

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("daemon", "stages", "judges", "evals", "replay", "world")
DECLARATIONS = {
    "daemon/settings.py",
    "daemon/service_settings.py",
    "daemon/task_settings.py",
    "daemon/config_file.py",
}


def table_keys() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("| key | default | meaning |", 1)[1].split("\n\n", 1)[0]
    found: list[str] = []
    for row in table.splitlines()[2:]:
        first = row.split("|")[1]
        found += re.findall(r"`([a-z_][a-z0-9_.*A-Z]*)`", first)
    return found


def source() -> str:
    return "\n".join(
        p.read_text(encoding="utf-8")
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
        if p.relative_to(ROOT).as_posix() not in DECLARATIONS
    )


def test_every_key_in_the_readme_is_declared_and_read() -> None:
    declared = set(keys()) | {f"tasks.NAME.{name}" for name in TaskSettings.model_fields}
    listed = table_keys()
    assert len(listed) > 40
    code = source()
    unread = []
    for key in listed:
        if key.endswith(".*"):
            prefix = key[:-1]
            assert any(k.startswith(prefix) for k in declared), key
            continue
        assert key in declared, f"README lists {key!r}, which no setting declares"
        leaf = key.rsplit(".", 1)[-1]
        if not re.search(rf"\.{leaf}\b|\"{leaf}\"|\b{leaf}=", code):
            unread.append(key)
    assert not unread, f"keys nothing reads: {unread}"
