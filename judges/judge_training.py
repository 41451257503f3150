"""Teaching the judge from verified signals: judge-training examples and their held-out split.

The Self-Rewarding recipe seeds the judge with human-labelled judgments; tutord has answers
whose quality is known instead: a candidate a task's grader scored against a reference, an
answer a user rated, a correction. `judge_examples` turns such answers into SFT examples in
the judge's own prompt format (the rubric prompt -> a short justification and `Score: N`),
balanced between right and wrong answers, so the policy learns to judge the way it is
asked to. Prompts in the judge's held-out split (`in_judge_holdout`, a stable hash) never
become judge-training examples: judge health is measured on their candidates, so it
reflects answers the judge was not trained on. Feedback becomes known answers in
`judges/feedback.py`. `judge_pairs` makes preference pairs from the same examples: the
right verdict against the same reasoning with the opposite decision, so DPO trains the one
step a small judge gets wrong most (its Correct/Wrong contradicting its own comparison) and
the judge keeps learning in preference stages (the Meta-Rewarding recipe, Wu et al. 2024,
trains the judge by DPO on judgments; here a verified signal, not a meta-judge, picks the
better judgment). It does not generate, store or decide answer pairs (see `judges/synth.py`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Chat = list[dict[str, str]]
Render = Callable[[Chat, str], Chat]
"""The judge's rubric prompt for (prompt, response), as chat messages."""
Explain = Callable[["KnownAnswer"], str | None]
"""The reason of the verdict on a known answer (`Task.explain`), or None."""

MAX_POINTS = 5
JUDGE_TASK = "judge"
"""The task label of judge-training examples (their own stratum in replay)."""


def in_judge_holdout(key: str, percent: int) -> bool:
    """Whether a prompt (by its hash key) is held out from judge training.

    >>> sum(in_judge_holdout(f"prompt {i}", 30) for i in range(1000))
    286
    """
    digest = hashlib.sha256(f"judge-holdout:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


def verdict(right: bool, reference: str | None = None, reason: str | None = None) -> str:
    """The judge's answer for a response of known quality: a short reason, then the score.
    The reason is `reason` (the task's, `Task.explain`), else, with the reference known,
    the reference stated first (the judge learns to work out the answer, then compare: a
    reference-guided verdict).

    >>> verdict(True), verdict(False, "18")
    ('Correct. Score: 5', 'Should be 18. Wrong. Score: 0')
    >>> verdict(False, "18", "Should be 9+9=18, got 17.")
    'Should be 9+9=18, got 17. Wrong. Score: 0'
    """
    if reason is None and reference and reference.strip():
        reason = f"Should be {' '.join(reference.split())}."
    lead = f"{reason} " if reason else ""
    return lead + (f"Correct. Score: {MAX_POINTS}" if right else "Wrong. Score: 0")


@dataclass(frozen=True)
class KnownAnswer:
    """A response whose quality a verified signal fixed: right (True) or wrong (False)."""

    prompt: Chat
    response: str
    right: bool
    task: str | None
    source: str  # grader | rating | correction
    prompt_index: int | None = None
    candidate_index: int | None = None
    interaction_id: int | None = None
    reference: str | None = None
    """The task's reference answer, when known: the verdict states it."""


@dataclass(frozen=True)
class JudgeExample:
    """One judge-training example: the rubric prompt and the verdict to learn; `contrary`
    is the same reasoning concluding the opposite (the rejected side of its judge pair)."""

    prompt: Chat
    completion: str
    answer: KnownAnswer
    contrary: str = ""


def judge_examples(
    answers: Sequence[KnownAnswer],
    render: Render,
    limit: int,
    seed: int,
    explain: Explain | None = None,
) -> list[JudgeExample]:
    """Up to `limit` examples, as many right as wrong answers where both exist (a judge
    trained on one kind only learns to say one score), deterministic under `seed`. Each
    verdict's reason is `explain(answer)` where it gives one, else the answer's reference."""
    if limit <= 0:
        return []
    rng = random.Random(f"judge-examples:{seed}")
    right = [a for a in answers if a.right]
    wrong = [a for a in answers if not a.right]
    rng.shuffle(right)
    rng.shuffle(wrong)
    half = limit // 2
    take_right = min(len(right), max(half, limit - len(wrong)))
    take_wrong = min(len(wrong), limit - take_right)
    chosen = right[:take_right] + wrong[:take_wrong]
    rng.shuffle(chosen)
    examples = []
    for a in chosen:
        reason = explain(a) if explain else None
        examples.append(
            JudgeExample(
                render(a.prompt, a.response),
                verdict(a.right, a.reference, reason),
                a,
                verdict(not a.right, a.reference, reason),
            )
        )
    return examples


def judge_pairs(examples: Sequence[JudgeExample], limit: int) -> list[tuple[Chat, str, str]]:
    """Up to `limit` preference pairs (rubric prompt, right verdict, contrary verdict) from
    judge examples, in their order (which `judge_examples` balanced and shuffled). The two
    sides share every token up to the decision: the pair teaches the decision alone.

    >>> answer = KnownAnswer([{"role": "user", "content": "2+2?"}], "4", True, "add", "grader")
    >>> [example] = judge_examples([answer], lambda p, r: p, 1, 0)
    >>> judge_pairs([example], 5)[0][1:]
    ('Correct. Score: 5', 'Wrong. Score: 0')
    """
    return [(e.prompt, e.completion, e.contrary) for e in examples[: max(limit, 0)] if e.contrary]
