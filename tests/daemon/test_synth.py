"""`tutord synth` on the arith world: stored with provenance, summarized, reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from daemon.cli import app
from replay.db import make_engine, session_scope
from replay.models import Judgment, PreferencePair, Sample, SFTExample, SynthRun
from world.logs import generate_logs, write_jsonl
from world.pretrain import bootstrap

runner = CliRunner()


@pytest.fixture(scope="module")
def world_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A barely trained world base model (a few steps: fluency does not matter here)."""
    out = tmp_path_factory.mktemp("world") / "arith-base"
    bootstrap(out, max_steps=3, seed=0, threads=1)
    return out


def make_home(root: Path, world_base: Path) -> Path:
    home = root / "home"
    assert runner.invoke(app, ["--home", str(home), "init"]).exit_code == 0
    (home / "world").mkdir()
    (home / "world" / "arith-base").symlink_to(world_base)
    with (home / "tutord.toml").open("a") as fh:
        fh.write("\n# test overrides\n")
    logs = root / "add.jsonl"
    with logs.open("w") as fh:
        write_jsonl(generate_logs("add", 40, seed=1), fh)
    result = runner.invoke(app, ["--home", str(home), "ingest", str(logs)])
    assert result.exit_code == 0, result.output
    return home


def cap_new_tokens(monkeypatch: pytest.MonkeyPatch, tokens: int) -> None:
    """Candidates and judge verdicts of at most `tokens` new tokens (fluency does not matter)."""
    for key in ("TUTORD_SYNTH__MAX_NEW_TOKENS", "TUTORD_JUDGE__MAX_NEW_TOKENS"):
        monkeypatch.setenv(key, str(tokens))


def synth(home: Path, *extra: str) -> dict[str, object]:
    result = runner.invoke(
        app, ["--home", str(home), "synth", "--prompts", "6", "--n", "3", "--seed", "7", *extra]
    )
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_synth_stores_everything_with_provenance_and_is_reproducible(
    tmp_path: Path, world_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap_new_tokens(monkeypatch, 8)
    homes = [make_home(tmp_path / name, world_base) for name in ("a", "b")]
    out = synth(homes[0], "--json")
    summary = json.loads(out.stdout)
    synth(homes[1], "--json")

    assert summary["candidates"] == 18
    assert summary["adapter"] == "base"
    assert sum(summary["prompts_by_origin"].values()) == 6
    assert set(summary["prompts_by_origin"]) <= {"interaction", "pool"}
    health = summary["health"]
    assert {"agreement", "length_correlation", "abstention_rate", "ok", "message"} <= set(health)
    assert summary["feedback_sft_new"] > 0 and summary["feedback_pairs_new"] > 0
    assert summary["judge_sft_new"] > 0  # the self-judge is taught from verified answers
    assert summary["judge_pairs_new"] > 0  # ... and given pairs: right verdict over contrary

    snapshots = []
    for home in homes:
        engine = make_engine(f"sqlite:///{home / 'tutord.db'}")
        with session_scope(engine) as s:
            samples = s.execute(select(Sample).order_by(Sample.id)).scalars().all()
            assert all(x.adapter == "base" and x.synth_run_id == 1 for x in samples)
            assert all(x.generation["seed"] == 7 for x in samples)
            judgments = s.execute(select(Judgment).order_by(Judgment.id)).scalars().all()
            scorers = {j.scorer for j in judgments}
            assert scorers == {"verifier", "judge:self:base"}
            assert all(j.raw is not None for j in judgments if j.scorer.startswith("judge"))
            sft = s.execute(select(SFTExample)).scalars().all()
            for row in sft:
                if row.origin == "judge":  # from a graded candidate or from feedback
                    assert row.sample_id is not None or row.interaction_id is not None
                    assert row.task == "judge" and "Score: " in row.completion
                    continue
                assert (row.sample_id is not None) == (row.origin == "synth")
                assert (row.interaction_id is not None) == (row.origin == "feedback")
            pairs = s.execute(select(PreferencePair)).scalars().all()
            assert all(
                p.chosen_sample_id and p.rejected_sample_id for p in pairs if p.origin == "synth"
            )
            judge_pairs = [p for p in pairs if p.origin == "judge"]
            assert len(judge_pairs) == summary["judge_pairs_new"]
            for p in judge_pairs:  # same reasoning, opposite decision
                assert p.task == "judge" and p.prompt[-1]["content"].startswith("Rate the")
                lead = p.chosen.rsplit("Correct.", 1)[0].rsplit("Wrong.", 1)[0]
                assert p.rejected.startswith(lead) and p.chosen != p.rejected
                assert {p.chosen[-1], p.rejected[-1]} == {"5", "0"}
            run = s.get(SynthRun, 1)
            assert run is not None and run.finished_at is not None and run.health == health
            decided = [p for p in pairs if p.origin == "synth" and p.meta.get("judge_decided")]
            assert run.counts["judge_decided_pairs"] == len(decided)
            snapshots.append(
                (
                    [(x.prompt, x.completion) for x in samples],
                    [(j.scorer, j.score, j.raw) for j in judgments],
                    sorted((r.origin, r.completion) for r in sft),
                    sorted((p.origin, p.chosen, p.rejected) for p in pairs),
                )
            )
        engine.dispose()
    assert snapshots[0] == snapshots[1]

    # A second run in the same home adds samples but no duplicate feedback data.
    again = json.loads(synth(homes[0], "--json").stdout)
    assert again["run_id"] == 2 and again["feedback_sft_new"] == 0 == again["feedback_pairs_new"]
    engine = make_engine(f"sqlite:///{homes[0] / 'tutord.db'}")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Sample)).scalar_one() == 36
    engine.dispose()


@pytest.mark.slow
def test_synth_prints_a_summary_with_judge_health(
    tmp_path: Path, world_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap_new_tokens(monkeypatch, 6)
    home = make_home(tmp_path, world_base)
    result = synth(home)
    assert "synthesis run 1 with policy base" in result.stdout
    assert "agreement with verifiers" in result.stdout and "abstentions" in result.stdout


def test_synth_without_a_world_model_says_how_to_get_one(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert runner.invoke(app, ["--home", str(home), "init"]).exit_code == 0
    result = runner.invoke(app, ["--home", str(home), "synth"])
    assert result.exit_code == 2 and "tutord world bootstrap" in result.stderr
