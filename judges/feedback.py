"""User feedback as training data: SFT examples, preference pairs and known answers.

`check_feedback` first sorts feedback by whether the task contradicts it (a correction the
grader scores wrong, a thumbs up on a wrong answer, a thumbs down on a right one, and, for a
task that declares an `answer_format`, a correction or a liked answer that does not have
that format, which is checked even when the prompt has no reference): contradicted feedback
is not trained on, only counted. `feedback_data` turns the rest
into SFT examples and pairs; the known answers it fixes teach the judge
(`judges/judge_training.py`). Nothing is stored here (see `daemon/synth_run.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from judges.judge_training import KnownAnswer
from judges.synth import Chat, Pair, SFTItem, prompt_hash
from judges.verifiers import Verifier

Grade = Callable[[str | None], Verifier | None]
"""The grader of a task label (None: the task has none)."""

FormatOf = Callable[[str | None], Verifier | None]
"""The answer-format grader of a task label (None: the task declares no format)."""


def _no_format(task: str | None) -> Verifier | None:
    return None


@dataclass(frozen=True)
class FeedbackItem:
    """An answered prompt with the user's feedback."""

    prompt: Chat
    answer: str
    rating: int | None = None
    correction: str | None = None
    task: str | None = None
    interaction_id: int | None = None
    reference: str | None = None


def feedback_data(items: Sequence[FeedbackItem]) -> tuple[list[SFTItem], list[Pair]]:
    """SFT examples and pairs from user feedback.

    A correction gives an SFT example (the correction) and a pair (correction over the
    original answer); an answer the user liked (thumbs up, no correction) gives an SFT
    example. Thumbs up and down on different answers to the same prompt give
    pairs (each liked answer over each disliked one).
    """
    sft: list[SFTItem] = []
    pairs: list[Pair] = []
    by_prompt: dict[str, list[FeedbackItem]] = {}
    for item in items:
        if item.rating == 1 and not item.correction:
            sft.append(
                SFTItem(
                    item.prompt,
                    item.answer,
                    item.task,
                    None,
                    "feedback",
                    interaction_id=item.interaction_id,
                )
            )
        if item.correction and item.correction.strip() and item.correction != item.answer:
            sft.append(
                SFTItem(
                    item.prompt,
                    item.correction,
                    item.task,
                    None,
                    "feedback",
                    interaction_id=item.interaction_id,
                )
            )
            pairs.append(
                Pair(
                    item.prompt,
                    item.correction,
                    item.answer,
                    item.task,
                    None,
                    "feedback",
                    interaction_id=item.interaction_id,
                )
            )
        if item.rating in (-1, 1):
            by_prompt.setdefault(prompt_hash(item.prompt), []).append(item)
    for group in by_prompt.values():
        liked = [g for g in group if g.rating == 1]
        disliked = [g for g in group if g.rating == -1]
        for up in liked:
            for down in disliked:
                if up.answer != down.answer:
                    pairs.append(
                        Pair(
                            up.prompt,
                            up.answer,
                            down.answer,
                            up.task or down.task,
                            None,
                            "feedback",
                            interaction_id=up.interaction_id,
                        )
                    )
    return sft, pairs


@dataclass(frozen=True)
class FeedbackCheck:
    """Feedback sorted by whether the task's grader agrees with it."""

    consistent: list[FeedbackItem]
    contradictions: list[FeedbackItem]
    known: list[KnownAnswer]
    """Answers whose quality the feedback fixed (and the grader did not contradict)."""


def check_feedback(
    items: Sequence[FeedbackItem], grade: Grade, format_of: FormatOf = _no_format
) -> FeedbackCheck:
    """Split feedback items into those the task does not contradict and those it does (its
    grader, where the item has a reference; its answer format, where it declares one);
    collect the known answers of the first kind."""
    consistent: list[FeedbackItem] = []
    contradictions: list[FeedbackItem] = []
    known: list[KnownAnswer] = []
    for item in items:
        grader = grade(item.task) if item.reference is not None else None

        def score(
            text: str, item: FeedbackItem = item, grader: Verifier | None = grader
        ) -> float | None:
            if grader is None:
                return None
            return grader([item.prompt], [text], reference=[item.reference])[0]

        answer_score = score(item.answer)
        correction_score = score(item.correction) if item.correction else None
        fmt = format_of(item.task)

        def unformatted(text: str, item: FeedbackItem = item, fmt: Verifier | None = fmt) -> bool:
            return fmt is not None and (fmt([item.prompt], [text])[0] or 0.0) < 1.0

        contradicted = (
            (item.correction and correction_score is not None and correction_score < 1.0)
            or (item.rating == 1 and answer_score is not None and answer_score < 1.0)
            or (item.rating == -1 and answer_score is not None and answer_score >= 1.0)
            or (bool(item.correction) and unformatted(item.correction or ""))
            or (item.rating == 1 and not item.correction and unformatted(item.answer))
        )
        if contradicted:
            contradictions.append(item)
            continue
        consistent.append(item)
        if item.correction and item.correction.strip() and item.correction != item.answer:
            known.append(
                KnownAnswer(
                    item.prompt,
                    item.correction,
                    True,
                    item.task,
                    "correction",
                    interaction_id=item.interaction_id,
                    reference=item.reference,
                )
            )
            known.append(
                KnownAnswer(
                    item.prompt,
                    item.answer,
                    False,
                    item.task,
                    "correction",
                    interaction_id=item.interaction_id,
                    reference=item.reference,
                )
            )
        elif item.rating in (-1, 1):
            known.append(
                KnownAnswer(
                    item.prompt,
                    item.answer,
                    item.rating == 1,
                    item.task,
                    "rating",
                    interaction_id=item.interaction_id,
                    reference=item.reference,
                )
            )
    return FeedbackCheck(consistent, contradictions, known)
