"""Replay mixing: the ratio and the stratification hold; provenance is written; fresh rows
come from the database above the watermarks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sqlalchemy import Engine

from daemon.assemble import (
    TrainingRow,
    Watermarks,
    assemble,
    fresh_rl_prompts,
    fresh_rows,
)
from daemon.stage_choice import curriculum_state
from replay.buffer import NewReplayItem, add_items
from replay.db import session_scope
from replay.models import Judgment, PreferencePair, Sample, SFTExample, SynthRun
from world.pack import arith_tasks

Q = [{"role": "user", "content": "What is 3+4?"}]


def sft_row(i: int, task: str) -> TrainingRow:
    return TrainingRow(
        "sft", task, {"messages": [*Q, {"role": "assistant", "content": str(i)}]}, f"x:{i}"
    )


def test_ratio_and_stratification_hold(db_engine: Engine, tmp_path: Path) -> None:
    add_items(db_engine, [NewReplayItem("sft", "add", {"i": i}) for i in range(1000)])
    add_items(db_engine, [NewReplayItem("sft", "sub", {"i": i}) for i in range(30)])
    add_items(db_engine, [NewReplayItem("pair", "add", {"i": i}) for i in range(50)])  # other kind
    fresh = [sft_row(i, "mul") for i in range(300)]
    ds = assemble(db_engine, "sft", tmp_path, fresh, ratio=0.25, seed=3, marks=Watermarks())
    assert (ds.fresh, ds.replay, ds.rows) == (300, 100, 400)
    assert ds.ratio_actual == 0.25
    # Stratified: the small old task is not drowned by the big one.
    assert ds.by_task["sub"]["replay"] == 30
    assert ds.by_task["add"]["replay"] == 70
    assert ds.by_task["mul"] == {"fresh": 300}

    lines = [json.loads(x) for x in ds.path.read_text().splitlines()]
    manifest = json.loads(ds.manifest_path.read_text())
    assert len(lines) == manifest["rows"] == 400
    assert all("messages" in row or "i" in row for row in lines)
    origins = [s["origin"] for s in manifest["sources"]]
    assert origins.count("replay") == 100 and origins.count("fresh") == 300
    assert origins != sorted(origins)  # shuffled, not fresh-then-replay
    refs = {s["ref"].split(":")[0] for s in manifest["sources"]}
    assert refs == {"x", "replay_items"}
    assert not list(tmp_path.glob(".*.tmp"))

    again = assemble(
        db_engine, "sft", tmp_path / "b", fresh, ratio=0.25, seed=3, marks=Watermarks()
    )
    assert again.path.read_text() == ds.path.read_text()  # reproducible
    none = assemble(db_engine, "sft", tmp_path / "c", fresh, ratio=0.0, seed=3, marks=Watermarks())
    assert none.replay == 0


def test_rehearsal_share_holds_however_many_tasks_are_replayed(
    db_engine: Engine, tmp_path: Path
) -> None:
    add_items(db_engine, [NewReplayItem("sft", "rehearsal", {"i": i}) for i in range(500)])
    fresh = [sft_row(i, "div") for i in range(120)]

    def build(folder: str, share: float) -> dict[str, int]:
        ds = assemble(
            db_engine,
            "sft",
            tmp_path / folder,
            fresh,
            ratio=0.5,
            seed=1,
            marks=Watermarks(),
            rehearsal_share=share,
        )
        assert ds.by_task["div"] == {"fresh": 120}
        return {t: c["replay"] for t, c in ds.by_task.items() if "replay" in c}

    # A first cycle (nothing else to replay): rehearsal alone, half the dataset either way.
    assert build("first", 0.5) == build("first-plain", 0.0) == {"rehearsal": 120}
    for task in ("add", "sub", "mul"):
        add_items(db_engine, [NewReplayItem("sft", task, {"t": task, "i": i}) for i in range(100)])
    # Stratified with three more tasks, rehearsal gets a quarter of the replay: 30 of 360 rows.
    assert build("plain", 0.0) == {"add": 30, "sub": 30, "mul": 30, "rehearsal": 30}
    # With its own share it is still half the dataset, on top of the other tasks' replay.
    assert build("share", 0.5) == {"add": 40, "sub": 40, "mul": 40, "rehearsal": 240}
    # A share the buffer's 500 rehearsal rows cannot fill: each is repeated, none left out.
    assert build("repeated", 0.8) == {"add": 40, "sub": 40, "mul": 40, "rehearsal": 960}
    rows = [json.loads(r) for r in (tmp_path / "repeated" / "train.jsonl").read_text().splitlines()]
    seen = Counter(row["i"] for row in rows if set(row) == {"i"})  # the rehearsal rows
    assert len(seen) == 500 and set(seen.values()) == {1, 2}


def test_fresh_rows_from_the_database_respect_watermarks(db_engine: Engine) -> None:
    with session_scope(db_engine) as s:
        run = SynthRun(adapter="base", seed=0, config={})
        s.add(run)
        s.flush()
        for i in range(3):
            s.add(
                SFTExample(
                    record_key=f"k{i}", origin="synth", prompt=Q, completion=str(i), task="add"
                )
            )
        s.add(
            PreferencePair(
                record_key="p1",
                source="t",
                content_hash="h",
                origin="synth",
                prompt=Q,
                chosen="7",
                rejected="8",
                task="add",
                meta={},
            )
        )
        # Prompt A: solved 1 of 2 times (mixed); prompt B: always solved (no signal).
        for prompt, scores in (("A", [1.0, 0.0]), ("B", [1.0, 1.0])):
            for score in scores:
                sample = Sample(
                    synth_run_id=run.id,
                    prompt=[{"role": "user", "content": prompt}],
                    prompt_hash=prompt * 8,
                    completion="x",
                    task="add",
                    meta={"reference": "7"},
                )
                s.add(sample)
                s.flush()
                s.add(Judgment(sample_id=sample.id, scorer="verifier", score=score))
    sft = fresh_rows(db_engine, "sft", Watermarks())
    assert [r.row["messages"][-1]["content"] for r in sft] == ["0", "1", "2"]
    assert len(fresh_rows(db_engine, "sft", Watermarks(sft_example_id=2))) == 1
    [pair] = fresh_rows(db_engine, "dpo", Watermarks())
    assert pair.row["chosen"] == [{"role": "assistant", "content": "7"}]
    [prompt] = fresh_rl_prompts(db_engine, 0)
    assert prompt.row == {
        "prompt": [{"role": "user", "content": "A"}],
        "reference": "7",
        "task": "add",
    }
    assert fresh_rl_prompts(db_engine, 1) == []
    tasks = {t.name: t for t in arith_tasks(0)}
    state = curriculum_state(db_engine, lambda stage: Watermarks(), sft_runs=0, tasks=tasks)
    assert (state.fresh_sft, state.fresh_pairs, state.rl_prompts) == (3, 1, 1)
    assert state.parse_rate == 0.0  # 3 of 4 right by the verifier, but "x" is no integer


def test_a_dpo_dataset_counts_the_pairs_only_the_judge_ordered(
    db_engine: Engine, tmp_path: Path
) -> None:
    with session_scope(db_engine) as s:
        for i, decided in enumerate((True, False, True)):
            s.add(
                PreferencePair(
                    record_key=f"p{i}",
                    source="t",
                    content_hash=f"h{i}",
                    origin="synth",
                    prompt=Q,
                    chosen="7",
                    rejected=str(i),
                    task="add",
                    meta={"judge_decided": decided, "synth_run_id": 1},
                )
            )
    fresh = fresh_rows(db_engine, "dpo", Watermarks())
    assert [r.judge_decided for r in fresh] == [True, False, True]
    ds = assemble(db_engine, "dpo", tmp_path, fresh, ratio=0.0, seed=0, marks=Watermarks())
    assert ds.judge_decided == 2
    assert json.loads(ds.manifest_path.read_text())["judge_decided"] == 2
    later = fresh_rows(db_engine, "dpo", Watermarks(pair_id=2))
    assert (
        assemble(
            db_engine, "dpo", tmp_path / "b", later, ratio=0.0, seed=0, marks=Watermarks()
        ).judge_decided
        == 1
    )
