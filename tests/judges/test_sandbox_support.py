"""Shared by the sandbox tests: limits for quick runs and the bubblewrap requirement.

Tests that need bubblewrap skip when it is missing or cannot create namespaces, except
under CI (CI=true), where they fail: CI must run them (`.ci/run` installs bubblewrap).
This module holds no tests itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from judges.sandbox import Limits, SandboxUnavailable, ensure_sandbox

FAST = Limits(wall_seconds=6, cpu_seconds=2, memory_mb=256)


def require_bwrap() -> None:
    """Skip the calling test without a working bubblewrap; fail it instead under CI."""
    try:
        ensure_sandbox()
    except SandboxUnavailable as exc:
        message = f"no OS sandbox: {exc}"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{message} (CI must run the sandbox tests)")
        pytest.skip(message)


def processes_named(name: str) -> list[int]:
    """Host pids whose command name (/proc/<pid>/comm) is `name`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == name:
                found.append(int(entry.name))
        except OSError:
            continue
    return found
