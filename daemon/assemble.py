"""Assembles a stage's dataset: fresh data for the stage plus a replay sample of the past.

Fresh rows come from the database (SFT examples for SFT, preference pairs for DPO,
verifiable prompts with mixed success for RL) in the TRL formats the stages read. A
replay sample of earlier training rows of the same kind is added at the configured
ratio, stratified by task so that old tasks stay represented. The dataset is written to
the cycle folder as JSONL with a manifest saying where every row came from; both files
are written to a temporary name and renamed, so a half-written dataset is never used.
The curriculum's inputs are measured in `daemon/stage_choice.py`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from sqlalchemy import Engine, func, select

from daemon.curriculum import Stage
from daemon.rehearsal import TASK as REHEARSAL
from judges.tasks import prompt_key
from replay.buffer import counts
from replay.db import session_scope
from replay.models import Judgment, PreferencePair, Sample, SFTExample, SynthRun
from replay.sampling import sample
from stages.atomic import write_atomic

Kind = Literal["sft", "pair", "prompt"]
STAGE_KIND: dict[str, Kind] = {"sft": "sft", "dpo": "pair", "rl": "prompt"}


@dataclass(frozen=True)
class TrainingRow:
    """One row a stage trains on, in its TRL format, with where it came from."""

    kind: Kind
    task: str
    row: dict[str, Any]
    ref: str
    judge_decided: bool = False
    """A pair that only the judge ordered (no verifier, reference or feedback did)."""


@dataclass(frozen=True)
class Watermarks:
    """The newest ids a stage has already trained on: rows above them are fresh."""

    sft_example_id: int = 0
    pair_id: int = 0
    synth_run_id: int = 0


@dataclass(frozen=True)
class AssembledDataset:
    stage: str
    path: Path
    manifest_path: Path
    fresh: int
    replay: int
    ratio_target: float
    by_task: dict[str, dict[str, int]]
    newest: Watermarks
    heldout_excluded: int = 0
    """Rows left out because their prompt is a task's held-out item."""
    judge_decided: int = 0
    """Fresh pairs in it that only the judge ordered."""

    @property
    def rows(self) -> int:
        return self.fresh + self.replay

    @property
    def ratio_actual(self) -> float:
        return self.replay / self.rows if self.rows else 0.0


def _task(task: str | None) -> str:
    return task or "(none)"


def fresh_sft(engine: Engine, after: int) -> list[TrainingRow]:
    with session_scope(engine) as s:
        rows = s.execute(select(SFTExample).where(SFTExample.id > after).order_by(SFTExample.id))
        return [
            TrainingRow(
                "sft",
                _task(r.task),
                {
                    "messages": [*r.prompt, {"role": "assistant", "content": r.completion}],
                    "task": r.task,
                    "origin": r.origin,
                },
                f"sft_examples:{r.id}",
            )
            for r in rows.scalars()
        ]


def fresh_pairs(engine: Engine, after: int) -> list[TrainingRow]:
    with session_scope(engine) as s:
        rows = s.execute(
            select(PreferencePair).where(PreferencePair.id > after).order_by(PreferencePair.id)
        )
        return [
            TrainingRow(
                "pair",
                _task(r.task),
                {
                    "prompt": r.prompt,
                    "chosen": [{"role": "assistant", "content": r.chosen}],
                    "rejected": [{"role": "assistant", "content": r.rejected}],
                    "task": r.task,
                },
                f"preference_pairs:{r.id}",
                bool((r.meta or {}).get("judge_decided")),
            )
            for r in rows.scalars()
        ]


def _verifiable_success(
    engine: Engine, after_run: int
) -> dict[str, tuple[list[Any], str, str | None, list[float]]]:
    """Per prompt (hash): prompt, reference, task and the verifier scores of its candidates
    from synthesis runs after `after_run`."""
    with session_scope(engine) as s:
        rows = s.execute(
            select(Sample.prompt_hash, Sample.prompt, Sample.meta, Sample.task, Judgment.score)
            .join(Judgment, Judgment.sample_id == Sample.id)
            .where(Judgment.scorer == "verifier", Judgment.score.is_not(None))
            .where(Sample.synth_run_id > after_run)
            .order_by(Sample.id)
        ).all()
    out: dict[str, tuple[list[Any], str, str | None, list[float]]] = {}
    for key, prompt, meta, task, score in rows:
        reference = (meta or {}).get("reference")
        if reference is None:
            continue
        out.setdefault(key, (prompt, str(reference), task, []))[3].append(float(score))
    return out


def fresh_rl_prompts(engine: Engine, after_run: int) -> list[TrainingRow]:
    """Verifiable prompts the policy solved sometimes but not always (the reward varies)."""
    rows = []
    for key, (prompt, reference, task, scores) in sorted(
        _verifiable_success(engine, after_run).items()
    ):
        if len(scores) >= 2 and 0.0 < sum(scores) / len(scores) < 1.0:
            rows.append(
                TrainingRow(
                    "prompt",
                    _task(task),
                    {"prompt": prompt, "reference": reference, "task": task},
                    f"prompt:{key[:16]}",
                )
            )
    return rows


def fresh_rows(engine: Engine, stage: Stage, marks: Watermarks) -> list[TrainingRow]:
    if stage == "sft":
        return fresh_sft(engine, marks.sft_example_id)
    if stage == "dpo":
        return fresh_pairs(engine, marks.pair_id)
    return fresh_rl_prompts(engine, marks.synth_run_id)


def newest(engine: Engine) -> Watermarks:
    """The newest ids in the database now (what a stage assembled now has seen)."""
    with session_scope(engine) as s:
        return Watermarks(
            int(s.execute(select(func.coalesce(func.max(SFTExample.id), 0))).scalar_one()),
            int(s.execute(select(func.coalesce(func.max(PreferencePair.id), 0))).scalar_one()),
            int(s.execute(select(func.coalesce(func.max(SynthRun.id), 0))).scalar_one()),
        )


def replay_count(fresh: int, ratio: float) -> int:
    """Replay rows so that they make `ratio` of the dataset: fresh * ratio / (1 - ratio).

    >>> replay_count(300, 0.25), replay_count(10, 0.0), replay_count(0, 0.5)
    (100, 0, 0)
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    return round(fresh * ratio / (1 - ratio))


def row_prompt(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompt of a training row of any kind (sft: the messages before the answer)."""
    if "messages" in row:
        return list(row["messages"][:-1])
    return list(row.get("prompt") or [])


R = TypeVar("R")


def _without_heldout(
    rows: list[R], heldout: frozenset[str], payload: Callable[[R], dict[str, Any]]
) -> tuple[list[R], int]:
    kept = [r for r in rows if prompt_key(row_prompt(payload(r))) not in heldout]
    return kept, len(rows) - len(kept)


def assemble(
    engine: Engine,
    stage: Stage,
    out_dir: Path,
    fresh: list[TrainingRow],
    *,
    ratio: float,
    seed: int,
    marks: Watermarks,
    heldout: frozenset[str] = frozenset(),
    grader_of: Callable[[str | None], str | None] | None = None,
    rehearsal_share: float = 0.0,
) -> AssembledDataset:
    """Mix `fresh` with a stratified replay sample and write `train.jsonl` + `manifest.json`.

    Rows whose prompt is a held-out item of some task (`heldout`, by `prompt_key`) are left
    out, fresh or replayed, and counted; RL rows get the `grader` column their task names
    (`grader_of(task)`), which the RL stage's reward reads. With `rehearsal_share` > 0 an
    SFT dataset's rehearsal rows (task `REHEARSAL`) are not part of the stratified sample:
    they are drawn on top of it, to make that share of the whole dataset, so rehearsal keeps
    its weight however many tasks the replay is spread over; when the buffer holds fewer
    rehearsal rows than that, they are repeated."""
    kind = STAGE_KIND[stage]
    fresh, dropped = _without_heldout(fresh, heldout, lambda r: r.row)
    k = replay_count(len(fresh), ratio)
    if rehearsal_share > 0 and kind == "sft":
        others = [t for t in counts(engine, kind).get(kind, {}) if t != REHEARSAL]
        replayed = (
            sample(engine, kind, k, policy="stratified", seed=seed, tasks=others)
            if k and others
            else []
        )
        r = replay_count(len(fresh) + len(replayed), rehearsal_share)
        rehearsal = sample(engine, kind, r, seed=seed, tasks=[REHEARSAL]) if r else []
        replayed += list(itertools.islice(itertools.cycle(rehearsal), r))  # repeated if short
    else:
        replayed = sample(engine, kind, k, policy="stratified", seed=seed) if k else []
    replayed, dropped_replay = _without_heldout(replayed, heldout, lambda r: r.payload)
    entries = [(r.row, "fresh", r.ref, r.task) for r in fresh]
    entries += [(r.payload, "replay", f"replay_items:{r.id}", r.task) for r in replayed]
    if kind == "prompt" and grader_of is not None:
        entries = [
            ({**row, "grader": grader_of(row.get("task"))}, o, ref, t) for row, o, ref, t in entries
        ]
    judge_decided = sum(1 for r in fresh if r.judge_decided)
    random.Random(f"assemble:{stage}:{seed}").shuffle(entries)
    by_task: dict[str, dict[str, int]] = {}
    for _, origin, _, task in entries:
        by_task.setdefault(task, Counter())[origin] += 1  # type: ignore[arg-type]
    out_dir.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row, _, _, _ in entries)
    path = out_dir / "train.jsonl"
    write_atomic(path, data)
    manifest = {
        "stage": stage,
        "kind": kind,
        "rows": len(entries),
        "fresh": len(fresh),
        "replay": len(replayed),
        "ratio_target": ratio,
        "ratio_actual": len(replayed) / len(entries) if entries else 0.0,
        "heldout_excluded": dropped + dropped_replay,
        "judge_decided": judge_decided,
        "by_task": {t: dict(c) for t, c in sorted(by_task.items())},
        "sha256": hashlib.sha256(data.encode("utf-8")).hexdigest(),
        "watermarks": asdict(marks),
        "sources": [
            {"line": i + 1, "origin": o, "ref": ref, "task": t}
            for i, (_, o, ref, t) in enumerate(entries)
        ],
    }
    manifest_path = out_dir / "manifest.json"
    write_atomic(manifest_path, json.dumps(manifest, indent=1))
    return AssembledDataset(
        stage,
        path,
        manifest_path,
        len(fresh),
        len(replayed),
        ratio,
        {t: dict(c) for t, c in by_task.items()},
        marks,
        dropped + dropped_replay,
        judge_decided,
    )
