"""The self-judge's training rows, made from answers whose quality a verified signal fixed.

When the policy judges itself, every synthesis run teaches it to judge: `judge_training_data`
turns the run's known answers (graded candidates, ratings, corrections) into judge examples
for SFT and judge pairs for DPO (`judges.judge_training`), each a configured share
(`synth.judge_share`) of its kind; `explainer` gives each verdict its task's worked reason.

It does not generate, judge or store anything (`daemon/synth_run.py` runs the synthesis
and stores these rows with the rest). It never uses a task's held-out prompt (known
answers exclude them upstream) or a prompt of the judge's held-out split, whatever signal
fixed the answer: judge health is measured on those prompts' candidates.
"""

from __future__ import annotations

import math

from judges.judge_training import (
    JUDGE_TASK,
    Explain,
    KnownAnswer,
    in_judge_holdout,
    judge_examples,
    judge_pairs,
)
from judges.llm_judge import PointwiseJudge
from judges.synth import Pair, SFTItem, SynthConfig, prompt_hash
from judges.tasks import Task, prompt_key


def explainer(tasks: dict[str, Task]) -> Explain:
    """The reason of the verdict on a known answer, from its task (`Task.explain`)."""

    def explain(answer: KnownAnswer) -> str | None:
        task = tasks.get(answer.task or "")
        if task is None or task.explain is None or not answer.reference:
            return None
        return task.explain(prompt_key(answer.prompt), answer.reference, answer.response)

    return explain


def judge_training_data(
    known: list[KnownAnswer],
    judge: PointwiseJudge,
    config: SynthConfig,
    *,
    answer_rows: tuple[int, int],
    explain: Explain,
) -> tuple[list[SFTItem], list[Pair]]:
    """The self-judge's training rows from answers of known quality: judge examples for SFT
    and judge pairs for DPO, each `judge_share` of its kind once added to the run's
    `answer_rows` (SFT examples, pairs)."""
    share = config.judge_share / (1 - config.judge_share)
    sft_limit, pair_limit = (math.ceil(share * n) for n in answer_rows)
    trainable = [
        a
        for a in known
        if not in_judge_holdout(prompt_hash(a.prompt), config.judge_holdout_percent)
    ]
    examples = judge_examples(
        trainable, judge.render, max(sft_limit, pair_limit), config.seed, explain
    )
    sft = [
        SFTItem(
            e.prompt,
            e.completion,
            JUDGE_TASK,
            None,
            "judge",
            e.answer.prompt_index,
            e.answer.candidate_index,
            e.answer.interaction_id,
        )
        for e in examples[:sft_limit]
    ]
    pairs = [
        Pair(prompt, chosen, rejected, JUDGE_TASK, 1.0, "judge")
        for prompt, chosen, rejected in judge_pairs(examples, pair_limit)
    ]
    return sft, pairs
