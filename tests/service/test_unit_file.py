"""The shipped systemd unit: `systemd-analyze verify` finds nothing to say about it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "tutord.service"


def test_the_unit_has_what_a_notify_service_needs() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "KillMode=mixed",
        "TimeoutStopSec=",
        "StateDirectory=tutord",
        "User=tutord",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/tutord",
    ):
        assert line in text, line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this installation's tutord.
    tutord = Path(sys.executable).parent / "tutord"
    unit = tmp_path / "tutord.service"
    unit.write_text(UNIT.read_text().replace("/opt/tutord/.venv/bin/tutord", str(tutord)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.stderr == "" and done.returncode == 0
