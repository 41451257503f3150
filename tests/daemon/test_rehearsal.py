"""Self-synthesized rehearsal: the base's answers, cut to whole sentences, join the replay
buffer once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from daemon.home import Home, HomeError
from daemon.rehearsal import SHIPPED, ensure_rehearsal, read_prompts
from daemon.settings import Settings
from judges.tasks import prompt_key
from replay.buffer import counts
from replay.db import session_scope
from replay.models import ReplayItem
from stages.generate.api import AdapterRef, Chat, SamplingParams


class Scripted:
    """A backend that answers from a table and records what it was asked."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, AdapterRef | None, SamplingParams]] = []
        self.closed = False

    def generate(
        self, prompts: list[Chat], params: SamplingParams, adapter: AdapterRef | None = None
    ) -> list[list[str]]:
        out = []
        for p in prompts:
            self.asked.append((p[-1]["content"], adapter, params))
            out.append([self.answers[p[-1]["content"]]])
        return out

    def close(self) -> None:
        self.closed = True


def _write(path: Path, prompts: list[str]) -> None:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))


def test_finished_answers_join_replay_once(db_engine: Engine, tmp_path: Path) -> None:
    home = Home(tmp_path)
    _write(tmp_path / "general.jsonl", ["Describe a cat.", "Say hi.", "A dog?", "Held out?"])
    settings = Settings.model_validate(
        {"replay": {"rehearsal_prompts": "general.jsonl", "rehearsal_max_new_tokens": 20}}
    )
    backend = Scripted(
        {
            "Describe a cat.": "A cat is a small pet.",
            "Say hi.": "Hi there, how are",
            "A dog?": "A dog is a pet. It likes to run ar",
            "Held out?": "x.",
        }
    )
    heldout = frozenset({prompt_key([{"role": "user", "content": "Held out?"}])})
    result = ensure_rehearsal(
        db_engine, home, settings, lambda: backend, heldout, say=lambda _: None
    )
    assert result is not None and (result.asked, result.kept) == (3, 2)
    assert backend.closed and {a for _, a, _ in backend.asked} == {None}
    assert {p.temperature for _, _, p in backend.asked} == {0.0}
    assert {p.max_new_tokens for _, _, p in backend.asked} == {20}
    assert counts(db_engine, "sft") == {"sft": {"rehearsal": 2}}
    with session_scope(db_engine) as s:
        payloads = s.execute(select(ReplayItem.payload)).scalars().all()
    # Cut off mid-sentence: kept up to its last finished sentence; none finished: left out.
    answers = {p["messages"][-1]["content"] for p in payloads}
    assert answers == {"A cat is a small pet.", "A dog is a pet."}
    # A second call (a later cycle) asks nothing and adds nothing.
    again = Scripted({})
    result = ensure_rehearsal(db_engine, home, settings, lambda: again, heldout, say=lambda _: None)
    assert result is not None and result.kept == 0 and again.asked == []
    assert counts(db_engine, "sft") == {"sft": {"rehearsal": 2}}


def test_answers_kept_as_generated_for_kl_rehearsal(db_engine: Engine, tmp_path: Path) -> None:
    """`rehearsal_cut = "tokens"`: cut-off answers are kept as generated, empty ones left out;
    refused unless rehearsal rows are taught by KL."""
    _write(tmp_path / "general.jsonl", ["Say hi.", "A dog?", "Nothing?"])
    replay = {"rehearsal_prompts": "general.jsonl", "rehearsal_cut": "tokens"}
    with pytest.raises(ValueError, match="distill_tasks"):
        Settings.model_validate({"replay": replay})
    settings = Settings.model_validate(
        {"replay": replay, "train": {"sft": {"distill_tasks": ["rehearsal"]}}}
    )
    backend = Scripted(
        {"Say hi.": "Hi there, how are", "A dog?": "A dog is a pet. It", "Nothing?": " "}
    )
    result = ensure_rehearsal(
        db_engine, Home(tmp_path), settings, lambda: backend, say=lambda _: None
    )
    assert result is not None and (result.asked, result.kept) == (3, 2)
    with session_scope(db_engine) as s:
        payloads = s.execute(select(ReplayItem.payload)).scalars().all()
    answers = {p["messages"][-1]["content"] for p in payloads}
    assert answers == {"Hi there, how are", "A dog is a pet. It"}


def test_protected_rehearsal_needs_rehearsal_rows() -> None:
    """`protect_tasks = ["rehearsal"]` without rehearsal prompts would fail every SFT stage
    for want of those rows: refused in the settings."""
    protect = {"train": {"sft": {"protect_tasks": ["rehearsal"]}}}
    with pytest.raises(ValueError, match="protect_tasks names 'rehearsal'"):
        Settings.model_validate(protect)
    settings = Settings.model_validate({**protect, "replay": {"rehearsal_prompts": "shipped"}})
    assert settings.train.sft.protect_tasks == ("rehearsal",)


def test_off_by_default_and_bad_lines_are_named(db_engine: Engine, tmp_path: Path) -> None:
    home = Home(tmp_path)
    assert ensure_rehearsal(db_engine, home, Settings(), lambda: Scripted({})) is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    with pytest.raises(HomeError, match=r"bad.jsonl:2: prompt"):
        read_prompts(bad)


def test_shipped_prompts_are_not_retention_questions() -> None:
    from evals.retention import general_questions

    shipped = {prompt_key(p) for p in read_prompts(SHIPPED)}
    asked = {prompt_key([{"role": "user", "content": q.prompt}]) for q in general_questions()}
    assert len(shipped) == 272 and not shipped & asked
