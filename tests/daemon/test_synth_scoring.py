"""The rubric prompt a judge gets: the compact one when the full rubric does not fit the
judge's context, decided without a warning about a sequence that is only measured."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from daemon.home import Home
from daemon.settings import Settings
from daemon.synth_scoring import default_template
from judges.llm_judge import COMPACT_POINTWISE_TEMPLATE

SHIPPED_BASE = Path(__file__).parents[2] / "world" / "base"


def test_the_world_judge_gets_the_compact_rubric_without_a_length_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.model_validate({"judge": {"base": str(SHIPPED_BASE)}})
    judge = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(SHIPPED_BASE))
    with caplog.at_level(logging.INFO):
        template = default_template(Home(tmp_path), settings, judge)  # type: ignore[arg-type]
    assert template == COMPACT_POINTWISE_TEMPLATE
    assert "too short for the full rubric" in caplog.text  # measured: it does not fit
    assert "Token indices sequence length" not in caplog.text
