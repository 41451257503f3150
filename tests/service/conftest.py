"""Fixtures shared by the service's tests: a home with its folders made."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.home import SUBDIRS, Home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    root = tmp_path / "home"
    for sub in SUBDIRS:
        (root / sub).mkdir(parents=True)
    return Home(root)
