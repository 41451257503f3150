"""`tutord synth`: feeds synthesis prompts from the database and stores what it returns.

It gathers prompts (recent interactions with their references, the live tasks' prompt
pools, and optionally Self-Instruct prompts written by the policy), leaving out every
task's held-out items, runs `judges.synth.synthesize` with the production policy, turns user
feedback into data with `judges.feedback` (feedback the task contradicts, by its grader or
its answer format, is counted, not trained on), teaches the self-judge from answers of known quality
(`judges.judge_training`), and stores samples, judgments,
SFT examples and preference pairs with their provenance (run, adapter, scorers, raw
verdicts) in one transaction. The scoring itself is in `judges/`; the rubric prompt the judge
gets and the tasks' graders are picked in `daemon/synth_scoring.py`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import Engine, select

from daemon import adapters
from daemon.home import Home
from daemon.judge_teaching import explainer, judge_training_data
from daemon.policy import judge_backend, policy_backend, production_adapter
from daemon.settings import Settings
from daemon.synth_scoring import default_template, format_for, verifier_for
from daemon.tasks import live_tasks
from judges.feedback import FeedbackItem, check_feedback, feedback_data
from judges.llm_judge import PointwiseJudge
from judges.synth import (
    Pair,
    PromptItem,
    SFTItem,
    SynthConfig,
    SynthResult,
    prompt_hash,
    self_instruct,
    synthesize,
)
from judges.tasks import Task, heldout_keys, prompt_key
from replay.db import insert_ignoring_duplicates, session_scope
from replay.models import (
    Interaction,
    Judgment,
    PreferencePair,
    Sample,
    SFTExample,
    SynthRun,
    utcnow,
)
from stages.generate.api import GenerationBackend


@dataclass(frozen=True)
class SynthSummary:
    """What one `tutord synth` run did."""

    run_id: int
    adapter: str
    prompts_by_origin: dict[str, int]
    candidates: int
    sft_new: int
    pairs_new: int
    feedback_sft_new: int
    feedback_pairs_new: int
    ties_dropped: int
    health: dict[str, Any]
    heldout_excluded: int = 0
    """Prompts left out because they are held-out items of a task."""
    judge_sft_new: int = 0
    """New judge-training examples (rubric prompt -> verdict) from verified answers."""
    judge_pairs_new: int = 0
    """New judge-training pairs (right verdict over the contrary one) from verified answers."""
    contradictions: int = 0
    """Feedback the task contradicts (grader or answer format): counted, not trained on."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _recent_interactions(engine: Engine, limit: int) -> list[Interaction]:
    if limit <= 0:
        return []
    with session_scope(engine) as session:
        rows = session.execute(
            select(Interaction)
            .order_by(Interaction.received_at.desc(), Interaction.id.desc())
            .limit(limit)
        ).scalars()
        return list(rows)


def gather_prompts(
    settings: Settings,
    n: int,
    seed: int,
    interactions: list[Interaction],
    tasks: dict[str, Task],
    heldout: frozenset[str],
) -> tuple[list[PromptItem], int]:
    """`n` distinct prompts: a share from recent interactions, the rest from the tasks'
    prompt pools (all from interactions when no task has a pool); and how many prompts were
    left out because they are some task's held-out items."""
    rng = random.Random(f"synth-prompts:{seed}")
    seen: set[str] = set()
    excluded = 0
    from_logs: list[PromptItem] = []
    for row in sorted(interactions, key=lambda r: r.id):
        prompt = row.messages[:-1]
        if prompt_key(prompt) in heldout:
            excluded += 1
            continue
        item = PromptItem(prompt, row.task, row.reference, "interaction", row.id)
        if item.key not in seen:
            seen.add(item.key)
            from_logs.append(item)
    pool: list[PromptItem] = []
    for task in tasks.values():
        for entry in task.pool(n, seed):
            if entry.key in heldout:
                excluded += 1
                continue
            item = PromptItem(entry.prompt, task.name, entry.reference, "pool")
            if item.key not in seen:
                pool.append(item)
    want_logs = len(from_logs) if not pool else round(n * settings.synth.interaction_share)
    chosen = rng.sample(from_logs, min(len(from_logs), want_logs, n))
    rng.shuffle(pool)
    for item in pool:
        if len(chosen) >= n:
            break
        if item.key not in seen:
            seen.add(item.key)
            chosen.append(item)
    return chosen, excluded


def _key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def _sft_row(example: SFTItem, run_id: int, sample_id: int | None) -> dict[str, Any]:
    return {
        "record_key": f"{example.origin}:{_key(prompt_hash(example.prompt), example.completion)}",
        "origin": example.origin,
        "prompt": example.prompt,
        "completion": example.completion,
        "task": example.task,
        "reward": example.reward,
        "sample_id": sample_id,
        "interaction_id": example.interaction_id,
        "synth_run_id": run_id,
        "created_at": utcnow(),
    }


def _pair_row(
    pair: Pair, run_id: int, chosen_id: int | None, rejected_id: int | None
) -> dict[str, Any]:
    content = _key(prompt_hash(pair.prompt), pair.chosen, pair.rejected)
    return {
        "record_key": f"{pair.origin}:{content}",
        "source": "tutord",
        "external_id": None,
        "content_hash": content,
        "origin": pair.origin,
        "prompt": pair.prompt,
        "chosen": pair.chosen,
        "rejected": pair.rejected,
        "task": pair.task,
        "interaction_id": pair.interaction_id,
        "chosen_sample_id": chosen_id,
        "rejected_sample_id": rejected_id,
        "margin": pair.margin,
        "meta": {"judge_decided": pair.judge_decided, "synth_run_id": run_id},
        "occurred_at": None,
        "created_at": utcnow(),
    }


def store(
    engine: Engine,
    result: SynthResult,
    *,
    adapter: str,
    config: SynthConfig,
    judge_name: str | None,
    feedback: tuple[list[SFTItem], list[Pair]],
    cycle_id: int | None = None,
    heldout_excluded: int = 0,
    judge_sft: list[SFTItem] | None = None,
    contradictions: int = 0,
    judge_pairs: list[Pair] | None = None,
) -> SynthSummary:
    """Write one run's samples, judgments, SFT examples and pairs in one transaction."""
    with session_scope(engine) as session:
        run = SynthRun(adapter=adapter, seed=config.seed, config=asdict(config), cycle_id=cycle_id)
        session.add(run)
        session.flush()
        sample_ids: dict[tuple[int, int], int] = {}
        samples = []
        for c in result.candidates:
            item = result.prompts[c.prompt_index]
            samples.append(
                Sample(
                    synth_run_id=run.id,
                    prompt=item.prompt,
                    prompt_hash=item.key,
                    completion=c.completion,
                    task=item.task,
                    interaction_id=item.interaction_id,
                    adapter=adapter,
                    generation={
                        "temperature": config.temperature,
                        "top_p": config.top_p,
                        "max_new_tokens": config.max_new_tokens,
                        "seed": config.seed,
                        "index": c.index,
                    },
                    meta={"origin": item.origin, "reward": c.reward, "reference": item.reference},
                )
            )
        session.add_all(samples)
        session.flush()
        judgments = []
        for c, sample in zip(result.candidates, samples, strict=True):
            sample_ids[(c.prompt_index, c.index)] = sample.id
            verifier = c.scores.get("verifier")
            if verifier is not None or result.prompts[c.prompt_index].reference is not None:
                judgments.append(Judgment(sample_id=sample.id, scorer="verifier", score=verifier))
            if "judge" in c.scores:
                judgments.append(
                    Judgment(
                        sample_id=sample.id,
                        scorer=f"judge:{judge_name}",
                        score=c.scores["judge"],
                        raw="\n---\n".join(c.judge_raw),
                        meta={"scale": "points/5"},
                    )
                )
        session.add_all(judgments)
        session.flush()
        conn = session.connection()
        sft_rows = [
            _sft_row(e, run.id, sample_ids.get((e.prompt_index, e.candidate_index)))  # type: ignore[arg-type]
            for e in result.sft
        ]
        pair_rows = [
            _pair_row(
                p,
                run.id,
                sample_ids.get((p.prompt_index, p.chosen_index)),  # type: ignore[arg-type]
                sample_ids.get((p.prompt_index, p.rejected_index)),  # type: ignore[arg-type]
            )
            for p in result.pairs
        ]
        sft_new = insert_ignoring_duplicates(conn, SFTExample.__table__, sft_rows, ["record_key"])  # type: ignore[arg-type]
        pairs_new = insert_ignoring_duplicates(
            conn, PreferencePair.__table__, pair_rows, ["record_key"]
        )  # type: ignore[arg-type]
        fb_sft = insert_ignoring_duplicates(
            conn,
            SFTExample.__table__,
            [_sft_row(e, run.id, None) for e in feedback[0]],
            ["record_key"],  # type: ignore[arg-type]
        )
        fb_pairs = insert_ignoring_duplicates(
            conn,
            PreferencePair.__table__,
            [_pair_row(p, run.id, None, None) for p in feedback[1]],
            ["record_key"],  # type: ignore[arg-type]
        )
        judge_new = insert_ignoring_duplicates(
            conn,
            SFTExample.__table__,
            [
                _sft_row(e, run.id, sample_ids.get((e.prompt_index, e.candidate_index)))  # type: ignore[arg-type]
                for e in judge_sft or []
            ],
            ["record_key"],  # type: ignore[arg-type]
        )
        judge_pairs_new = insert_ignoring_duplicates(
            conn,
            PreferencePair.__table__,
            [_pair_row(p, run.id, None, None) for p in judge_pairs or []],
            ["record_key"],  # type: ignore[arg-type]
        )
        origins: dict[str, int] = {}
        for item in result.prompts:
            origins[item.origin] = origins.get(item.origin, 0) + 1
        health = asdict(result.health) | {"abstention_rate": result.health.abstention_rate}
        run.counts = dict(result.counts) | {
            "sft_new": sft_new,
            "pairs_new": pairs_new,
            "feedback_sft_new": fb_sft,
            "feedback_pairs_new": fb_pairs,
            "prompts_by_origin": origins,
            "heldout_excluded": heldout_excluded,
            "judge_sft_new": judge_new,
            "judge_pairs_new": judge_pairs_new,
            "feedback_contradictions": contradictions,
            "judge_decided_pairs": sum(1 for p in result.pairs if p.judge_decided),
        }
        run.health = health
        run.finished_at = utcnow()
        return SynthSummary(
            run.id,
            adapter,
            origins,
            len(result.candidates),
            sft_new,
            pairs_new,
            fb_sft,
            fb_pairs,
            result.dropped_ties,
            health,
            heldout_excluded=heldout_excluded,
            judge_sft_new=judge_new,
            judge_pairs_new=judge_pairs_new,
            contradictions=contradictions,
        )


def _known_prompts(engine: Engine) -> set[str]:
    with session_scope(engine) as session:
        rows = session.execute(select(Sample.prompt).distinct().limit(10_000)).scalars()
        return {p[-1]["content"] for p in rows if p}


def run_synth(
    engine: Engine,
    home: Home,
    settings: Settings,
    *,
    prompts: int | None = None,
    n: int | None = None,
    seed: int = 0,
    backend: GenerationBackend | None = None,
    cycle_id: int | None = None,
) -> SynthSummary:
    """One synthesis run with the production policy; returns what it stored."""
    s = settings.synth
    config = replace(s, seed=seed, n=n or s.n, prompts=prompts or s.prompts)
    adapter = production_adapter(engine, home)
    own_backend = backend is None
    policy = backend or policy_backend(home, settings)
    separate_judge = judge_backend(home, settings) if settings.judge.enabled else None
    try:
        interactions = _recent_interactions(engine, s.recent_interactions)
        tasks = live_tasks(engine, home, settings)
        heldout = heldout_keys(tasks.values())
        grade = verifier_for(settings, tasks)
        items, excluded = gather_prompts(
            settings, prompts or s.prompts, seed, interactions, tasks, heldout
        )
        if s.self_instruct:
            examples = [i.prompt[-1]["content"] for i in items if i.prompt]
            for text in self_instruct(
                policy,
                adapter,
                examples,
                n=s.self_instruct,
                seed=seed,
                known=_known_prompts(engine) | set(examples),
            ):
                if prompt_key(text) in heldout:
                    excluded += 1
                    continue
                items.append(
                    PromptItem([{"role": "user", "content": text}], None, None, "self-instruct")
                )
        judge = None
        judge_name = None
        if settings.judge.enabled:
            j = settings.judge
            judge_name = (
                j.base or f"self:{adapters.label(None) if adapter is None else adapter.name}"
            )
            judge = PointwiseJudge(
                separate_judge or policy,
                adapter=None if separate_judge else adapter,
                k=j.k,
                temperature=j.temperature,
                max_new_tokens=j.max_new_tokens,
                seed=seed,
                verdict=j.verdict,
                template=j.pointwise_template
                or default_template(home, settings, separate_judge or policy),
                name=judge_name,
            )
        result = synthesize(
            items,
            policy,
            adapter=adapter,
            verifier_for=grade,
            judge=judge,
            config=config,
        )
        checked = check_feedback(
            [
                FeedbackItem(
                    r.messages[:-1],
                    r.messages[-1]["content"],
                    r.feedback_rating,
                    r.feedback_correction,
                    r.task,
                    r.id,
                    r.reference,
                )
                for r in interactions
                if (r.feedback_rating is not None or r.feedback_correction)
                and prompt_key(r.messages[:-1]) not in heldout
            ],
            grade,
            format_for(tasks),
        )
        feedback = feedback_data(checked.consistent)
        judge_sft: list[SFTItem] = []
        judge_pair_items: list[Pair] = []
        if judge is not None and separate_judge is None and config.judge_share > 0:
            # the policy judges itself: teach it from answers whose quality is known
            judge_sft, judge_pair_items = judge_training_data(
                result.known + checked.known,
                judge,
                config,
                answer_rows=(
                    len(result.sft) + len(feedback[0]),
                    len(result.pairs) + len(feedback[1]),
                ),
                explain=explainer(tasks),
            )
    finally:
        if own_backend:
            policy.close()
        if separate_judge is not None:
            separate_judge.close()
    label = "base" if adapter is None else adapter.name
    return store(
        engine,
        result,
        adapter=label,
        config=config,
        judge_name=judge_name,
        feedback=feedback,
        cycle_id=cycle_id,
        heldout_excluded=excluded,
        judge_sft=judge_sft,
        judge_pairs=judge_pair_items,
        contradictions=len(checked.contradictions),
    )
