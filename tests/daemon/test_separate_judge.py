"""`judge.base`: a second model judges the policy's candidates. Two homes share the policy
and the seed, so they synthesize the same candidates; in one the policy judges itself, in
the other a separate tiny model (the world's shape, random weights) does: its judgments
carry the scorer `judge:<its path>` and its verdicts are its own, not the policy's."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from daemon.cli import app
from replay.db import make_engine, session_scope
from replay.models import Judgment, Sample
from tests.stages.test_stage_support import make_base
from world.logs import generate_logs, write_jsonl
from world.pretrain import bootstrap

pytestmark = pytest.mark.slow

runner = CliRunner()


def make_home(root: Path, base: Path, logs: Path) -> Path:
    home = root / "home"
    assert runner.invoke(app, ["--home", str(home), "init"]).exit_code == 0
    (home / "world").mkdir()
    (home / "world" / "arith-base").symlink_to(base)
    result = runner.invoke(app, ["--home", str(home), "ingest", str(logs)])
    assert result.exit_code == 0, result.output
    return home


def synth(home: Path, env: dict[str, str]) -> list[tuple[str, str, str | None, str | None]]:
    """Run `tutord synth`; (prompt, completion, judge scorer, verdict) of every candidate."""
    result = runner.invoke(
        app,
        ["--home", str(home), "synth", "--prompts", "6", "--n", "2", "--seed", "7", "--json"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    engine = make_engine(f"sqlite:///{home / 'tutord.db'}")
    with session_scope(engine) as s:
        verdicts = {
            j.sample_id: (j.scorer, j.raw)
            for j in s.execute(select(Judgment).where(Judgment.scorer.like("judge:%"))).scalars()
        }
        rows = [
            (x.prompt[-1]["content"], x.completion, *verdicts.get(x.id, (None, None)))
            for x in s.execute(select(Sample).order_by(Sample.id)).scalars()
        ]
    engine.dispose()
    return rows


def test_a_separate_judge_model_scores_the_candidates(tmp_path: Path) -> None:
    policy = bootstrap(tmp_path / "policy-base", max_steps=3, seed=0, threads=1)
    judge = make_base(tmp_path / "judge-model", seed=1)  # the world's shape, other weights
    logs = tmp_path / "add.jsonl"
    with logs.open("w") as fh:
        write_jsonl(generate_logs("add", 20, seed=1), fh)
    env = {"TUTORD_SYNTH__MAX_NEW_TOKENS": "8", "TUTORD_JUDGE__MAX_NEW_TOKENS": "8"}

    itself = synth(make_home(tmp_path / "self", policy, logs), env)
    separate = synth(
        make_home(tmp_path / "separate", policy, logs), {**env, "TUTORD_JUDGE__BASE": str(judge)}
    )

    assert len(separate) == 12
    assert [r[:2] for r in separate] == [r[:2] for r in itself]  # the same candidates
    assert {r[2] for r in itself} == {"judge:self:base"}
    assert {r[2] for r in separate} == {f"judge:{judge}"}  # every candidate, by the judge model
    assert all(r[3] is not None for r in separate)
    assert [r[3] for r in separate] != [r[3] for r in itself]  # the judge model's own verdicts
