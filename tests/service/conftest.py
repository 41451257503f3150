"""Fixtures shared by the service's tests: a home with its folders made, a fake base model."""

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


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A (fake) base model folder: the name the server serves the base under."""
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    return folder
