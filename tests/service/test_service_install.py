"""`tutord service install` (`daemon/service/unit.py`): it writes the shipped unit, adapted
to this environment's `tutord`, the chosen home and user, into a unit folder (a temporary
folder here), leaves an identical unit alone, refuses to replace a different one without
`--force`, prints the systemctl commands to run next and runs none of them; the unit it
writes passes `systemd-analyze verify` silently where that command exists."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import daemon.service.unit as unit_module
from daemon.cli import app
from daemon.service.unit import SHIPPED_UNIT, UnitChoice, UnitError, render_unit

runner = CliRunner()
NEXT = "systemctl daemon-reload && systemctl enable --now tutord"


def install(unit_dir: Path, *args: str, home: str | None = None) -> tuple[int, str]:
    head = ["--home", home] if home else []
    result = runner.invoke(app, [*head, "service", "install", "--unit-dir", str(unit_dir), *args])
    return result.exit_code, result.output


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.fixture(autouse=True)
def tutord_outside_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit runs this venv's `tutord`, which a checkout under /tmp (as CI's may be) has
    under /tmp, refused there (PrivateTmp); these tests stand in an executable elsewhere."""
    if unit_module._under(unit_module.this_tutord(), unit_module.PRIVATE_TMP):
        stand_in = Path(shutil.which("sh") or "/bin/sh").resolve()
        monkeypatch.setattr(unit_module, "this_tutord", lambda: stand_in)


@pytest.fixture
def systemctl_trap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `systemctl` first on PATH that only leaves a mark: the command must not run it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mark = tmp_path / "systemctl-ran"
    trap = bin_dir / "systemctl"
    trap.write_text(f'#!/bin/sh\necho "$@" >> {mark}\n')
    trap.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("TUTORD_HOME", raising=False)
    return mark


def test_install_writes_the_adapted_unit_and_prints_what_to_run(
    tmp_path: Path, systemctl_trap: Path
) -> None:
    units = tmp_path / "units"
    units.mkdir()
    code, output = install(units)
    assert code == 0, output
    unit = units / "tutord.service"
    text = unit.read_text()
    found = directives(text)
    assert found["ExecStart"] == [f"{unit_module.this_tutord()} --home /var/lib/tutord run"]
    assert found["User"] == ["tutord"] and found["Group"] == ["tutord"]
    assert found["StateDirectory"] == ["tutord"]
    assert found["ReadWritePaths"] == ["/var/lib/tutord"]
    assert "TUTORD_HOME=/var/lib/tutord" in found["Environment"]
    # everything else is the shipped unit's
    shipped = directives(SHIPPED_UNIT.read_text())
    for key in ("Type", "WatchdogSec", "KillMode", "TimeoutStopSec", "ProtectSystem"):
        assert found[key] == shipped[key], key
    assert "/opt/tutord" not in text
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert sorted(p.name for p in units.iterdir()) == ["tutord.service"]  # no temporary left
    assert NEXT in output and str(unit) in output
    assert not systemctl_trap.exists()  # printed, never run

    again_code, again = install(units)
    assert again_code == 0 and "unchanged" in again
    assert unit.read_text() == text


def test_a_different_unit_is_replaced_only_with_force(tmp_path: Path, systemctl_trap: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    mine = "[Service]\nExecStart=/usr/bin/true\n"
    (units / "tutord.service").write_text(mine)
    code, output = install(units, "--user", "svc")
    assert code == 1
    assert "differs" in output and "--force" in output
    assert (units / "tutord.service").read_text() == mine
    code, output = install(units, "--user", "svc", "--force")
    assert code == 0, output
    found = directives((units / "tutord.service").read_text())
    assert found["User"] == ["svc"] and found["Group"] == ["svc"]
    assert not systemctl_trap.exists()


def test_a_chosen_home_outside_var_lib(tmp_path: Path, systemctl_trap: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    code, output = install(units, "--group", "staff", home="/srv/tutord-home")
    assert code == 0, output
    found = directives((units / "tutord.service").read_text())
    assert found["ExecStart"] == [f"{unit_module.this_tutord()} --home /srv/tutord-home run"]
    assert found["WorkingDirectory"] == ["/srv/tutord-home"]
    assert found["Group"] == ["staff"]
    assert "StateDirectory" not in found and "StateDirectoryMode" not in found
    assert "install -d -o tutord -g staff -m 0750 /srv/tutord-home" in output


def test_refusals_write_nothing(tmp_path: Path, systemctl_trap: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    for home, args, says in (
        (str(tmp_path / "home"), (), "PrivateTmp"),  # /tmp is private to the service
        ("/srv/a b", (), "no spaces"),
        (None, ("--user", "Bad User"), "not a usable account name"),
    ):
        code, output = install(units, *args, home=home)
        assert code == 2 and says in output, output
    assert list(units.iterdir()) == []
    code, output = install(tmp_path / "missing")
    assert code == 2 and "does not exist" in output


def test_the_shipped_unit_must_have_the_lines_it_adapts() -> None:
    with pytest.raises(UnitError, match="no ExecStart line"):
        render_unit(
            "[Service]\nType=notify\nUser=x\nGroup=x\nWorkingDirectory=/x\n"
            "ReadWritePaths=/x\nEnvironment=TUTORD_HOME=/x\n",
            UnitChoice(Path("/srv/t")),
        )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize("home", [None, "/srv/tutord-home", "/home/someone/tutord"])
def test_systemd_analyze_verify_is_silent_on_the_written_unit(
    tmp_path: Path, systemctl_trap: Path, home: str | None
) -> None:
    units = tmp_path / "units"
    units.mkdir()
    code, output = install(units, home=home)
    assert code == 0, output
    done = subprocess.run(
        ["systemd-analyze", "verify", str(units / "tutord.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stderr == "" and done.returncode == 0
