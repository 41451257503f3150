"""The training-stage tests' default test world: a module that needs another one (a parent
adapter, DPO or RL rows) defines its own `world` fixture, which takes precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stages.test_stage_support import make_world, sft_rows


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The base and an SFT training file of 32 rows ("train"), once per module."""
    return make_world(tmp_path_factory.mktemp("sft-world"), train=sft_rows(32))
