"""The curriculum on a real database: the parse rate counts answers that parse (right or
wrong), and `choose_stage` picks SFT, then DPO, then RL from the rows present alone."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from sqlalchemy import Engine

from daemon.assemble import newest
from daemon.curriculum import CurriculumSettings
from daemon.home import Home
from daemon.models import AdapterVersion, Cycle, ProductionPointer
from daemon.settings import Settings
from daemon.stage_choice import choose_stage, parse_rate
from daemon.task_settings import TaskSettings
from daemon.tasks import live_tasks
from replay.db import session_scope
from replay.models import Judgment, PreferencePair, Sample, SFTExample, SynthRun
from world.pack import arith_tasks

SETTINGS = Settings(
    curriculum=CurriculumSettings(
        min_sft_examples=4, parse_floor=0.5, min_pairs=3, min_rl_prompts=2
    )
)


def synth_run(engine: Engine, answers: list[tuple[str, str, float]], task: str = "add") -> None:
    """One synthesis run: (question, completion, verifier score) per candidate; the
    reference of every question is 7."""
    with session_scope(engine) as s:
        run = SynthRun(adapter="production", seed=0, config={})
        s.add(run)
        s.flush()
        for question, completion, score in answers:
            sample = Sample(
                synth_run_id=run.id,
                prompt=[{"role": "user", "content": question}],
                prompt_hash=(question * 64)[:64],
                completion=completion,
                task=task,
                meta={"reference": "7"},
            )
            s.add(sample)
            s.flush()
            s.add(Judgment(sample_id=sample.id, scorer="verifier", score=score))


def add_sft(engine: Engine, n: int, tag: str, task: str = "add") -> None:
    with session_scope(engine) as s:
        for i in range(n):
            s.add(
                SFTExample(
                    record_key=f"{tag}{i}",
                    origin="synth",
                    prompt=[{"role": "user", "content": f"{tag} {i}?"}],
                    completion="7",
                    task=task,
                )
            )


def add_pairs(engine: Engine, n: int, tag: str) -> None:
    with session_scope(engine) as s:
        for i in range(n):
            s.add(
                PreferencePair(
                    record_key=f"{tag}{i}",
                    source="t",
                    content_hash=f"{tag}{i}",
                    origin="synth",
                    prompt=[{"role": "user", "content": f"{tag} {i}?"}],
                    chosen="7",
                    rejected="8",
                    task="add",
                    meta={},
                )
            )


def finish_cycle(
    engine: Engine, stage: str, version: int, task: str = "add", fresh: int = 1
) -> None:
    """What a promoted cycle of `stage` leaves: its adapter in production, its watermarks, and
    the `fresh` rows of `task` it trained on."""
    marks = asdict(newest(engine))
    with session_scope(engine) as s:
        s.add(
            AdapterVersion(
                version=version,
                name=f"v{version}",
                parent=version - 1 if version > 1 else None,
                base_id="base",
                base_config_sha256="0" * 64,
                stage=stage,
                status="promoted",
                manifest={},
            )
        )
        s.flush()
        s.merge(ProductionPointer(id=1, version=version))
        s.add(
            Cycle(
                stage=stage,
                state="done",
                outcome="promoted",
                watermarks=marks,
                candidate_version=version,
                dataset={"by_task": {task: {"fresh": fresh}}},
            )
        )


def test_parse_rate_counts_parsing_not_correctness(sqlite_engine: Engine, tmp_path: Path) -> None:
    tasks = {t.name: t for t in arith_tasks(0)}
    assert parse_rate(sqlite_engine, tasks) is None  # no synthesis run yet
    # One right, two wrong integers, two that do not parse: accuracy 20%, parse rate 60%.
    synth_run(
        sqlite_engine,
        [
            ("a", "7", 1.0),
            ("b", "8", 0.0),
            ("c", "The answer is 12.", 0.0),
            ("d", "no idea", 0.0),
            ("e", "7.5", 0.0),
        ],
    )
    assert parse_rate(sqlite_engine, tasks) == 0.6
    # A task with no answer format is not measured.
    unformatted = {"add": TaskSettings(grader="numeric")}
    home = Home(tmp_path / "home")
    no_format = live_tasks(sqlite_engine, home, Settings(task_packs=[], tasks=unformatted))
    assert no_format["add"].answer_format is None
    assert parse_rate(sqlite_engine, no_format) is None
    # Only the latest run counts; a user task's own format (a regex) is used as declared.
    settings = Settings(task_packs=[], tasks={"add": TaskSettings(answer_format="regex:-?\\d+")})
    formatted = live_tasks(sqlite_engine, home, settings)
    assert formatted["add"].answer_format == "regex:-?\\d+"
    synth_run(sqlite_engine, [("a", "7", 1.0), ("b", "9", 0.0), ("c", "It is 7", 1.0)])
    assert parse_rate(sqlite_engine, formatted) == 2 / 3  # "It is 7" is no whole-text match
    assert parse_rate(sqlite_engine, tasks) == 1.0  # the world's format: ends in an integer
    # Candidates of tasks that are not live do not count.
    assert parse_rate(sqlite_engine, {t.name: t for t in arith_tasks(0) if t.name != "add"}) is None


def test_choose_stage_picks_sft_then_dpo_then_rl_from_the_rows(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    engine, home = sqlite_engine, Home(tmp_path / "home")

    def choose() -> tuple[str | None, str]:
        decision = choose_stage(engine, home, SETTINGS)
        return decision.stage, decision.reason

    assert choose()[0] is None  # an empty database: nothing to train on

    # The base policy rarely answers with a number (1 of 8 parse); data of every kind exists.
    unparsed = [(q, text, 0.0) for q in "abc" for text in ("hmm", "what")]
    synth_run(engine, [*unparsed, ("d", "hmm", 0.0), ("d", "7", 1.0)])
    add_sft(engine, 6, "s1-")
    add_pairs(engine, 3, "p1-")
    stage, reason = choose()
    assert stage == "sft"
    assert "no SFT yet" in reason and "6 fresh SFT examples >= 4 (min_sft_examples)" in reason
    assert "parse rate 12% < 50% (parse_floor)" in reason  # 1/8 = 12.5%

    # SFT ran; until a new synthesis run shows answers parse, only SFT data would help.
    finish_cycle(engine, "sft", 1)
    stage, reason = choose()
    assert stage is None and "Waiting for SFT data" in reason
    assert "0 fresh SFT examples < 4 (min_sft_examples)" in reason

    # The SFT'd policy answers with integers, often wrong; feedback brings a few more SFT
    # rows (enough for SFT), and pairs keep arriving: DPO, not SFT again.
    synth_run(engine, [(q, ans, float(ans == "7")) for q in "abcd" for ans in ("7", "8")])
    add_sft(engine, 4, "s2-")
    add_pairs(engine, 2, "p2-")
    stage, reason = choose()
    assert stage == "dpo"
    assert "4 fresh SFT examples >= 4" in reason
    assert "parse rate 100% >= 50% (parse_floor)" in reason
    assert "5 fresh pairs >= 3 (min_pairs)" in reason
    assert "1 SFT run on the production line >= 1" in reason

    # DPO ran; the pairs are spent, but prompts solved sometimes-but-not-always remain.
    finish_cycle(engine, "dpo", 2)
    synth_run(engine, [("a", "7", 1.0), ("a", "6", 0.0), ("b", "7", 1.0), ("b", "7", 1.0)])
    add_pairs(engine, 1, "p3-")
    stage, reason = choose()
    assert stage == "rl" and "DPO trained production" in reason  # read from the registry
    assert "1 fresh pairs < 3 (min_pairs)" in reason
    assert "4 prompts solved sometimes but not always >= 2 (min_rl_prompts)" in reason

    # RL ran; nothing new for DPO or RL, but the SFT rows that never preempted them remain.
    finish_cycle(engine, "rl", 3)
    stage, reason = choose()
    assert stage == "sft" and "SFT again" in reason
    marks = asdict(newest(engine))  # a rejected SFT cycle leaves them fresh: not learnt
    with session_scope(engine) as s:
        s.add(Cycle(stage="sft", state="done", outcome="rejected", watermarks=marks))
    stage, reason = choose()
    assert stage == "sft" and "SFT again" in reason
    finish_cycle(engine, "sft", 4)  # a promoted one spends them
    stage, reason = choose()
    assert stage is None and "no stage has enough fresh data" in reason

    # An explicitly requested stage bypasses the criteria but still needs fresh rows.
    assert choose_stage(engine, home, SETTINGS, "rl").stage is None
    assert choose_stage(engine, home, SETTINGS, "dpo").stage == "dpo"  # 1 pair, below min


def test_a_new_task_gets_sft_before_dpo(sqlite_engine: Engine, tmp_path: Path) -> None:
    """After SFT taught `add`, `sub` arrives with SFT data while pairs abound: SFT (for
    the task no SFT has trained), not DPO; once it has had SFT, DPO."""
    engine, home = sqlite_engine, Home(tmp_path / "home")
    synth_run(engine, [(q, "7", 1.0) for q in "abcd"])
    add_sft(engine, 6, "s1-")
    finish_cycle(engine, "sft", 1)
    synth_run(engine, [(q, ans, float(ans == "7")) for q in "abcd" for ans in ("7", "8")])
    add_pairs(engine, 9, "p1-")
    add_sft(engine, 5, "s2-", task="sub")
    settings = Settings(task_packs=["arith"], curriculum=SETTINGS.curriculum)
    decision = choose_stage(engine, home, settings)
    assert decision.stage == "sft", decision.reason
    assert "no SFT yet: sub" in decision.reason and "sub (5)" in decision.reason
    finish_cycle(engine, "sft", 2, task="sub", fresh=5)
    assert choose_stage(engine, home, settings).stage == "dpo"
