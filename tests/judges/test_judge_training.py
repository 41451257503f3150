"""Judge-training examples from verified signals, and feedback the grader contradicts."""

from __future__ import annotations

from judges.feedback import FeedbackItem, check_feedback, feedback_data
from judges.graders import resolve_grader
from judges.judge_training import (
    KnownAnswer,
    in_judge_holdout,
    judge_examples,
    judge_pairs,
    verdict,
)
from judges.llm_judge import COMPACT_POINTWISE_TEMPLATE
from world.verify import verify_integer

Q = [{"role": "user", "content": "What is 3+4?"}]
OPEN = [{"role": "user", "content": "Say something."}]


def render(prompt: list[dict[str, str]], response: str) -> list[dict[str, str]]:
    text = COMPACT_POINTWISE_TEMPLATE.format(prompt=prompt[-1]["content"], response=response)
    return [{"role": "user", "content": text}]


def known(right: int, wrong: int) -> list[KnownAnswer]:
    return [KnownAnswer(Q, "7", True, "add", "grader", 0, i) for i in range(right)] + [
        KnownAnswer(Q, "8", False, "add", "grader", 0, 100 + i) for i in range(wrong)
    ]


def test_examples_are_the_judges_own_prompt_and_verdict_balanced() -> None:
    examples = judge_examples(known(30, 5), render, limit=10, seed=0)
    assert len(examples) == 10
    assert sum(e.answer.right for e in examples) == 5  # as many wrong as exist, rest right
    for e in examples:
        assert e.prompt == render(Q, e.answer.response)
        assert e.completion == verdict(e.answer.right)
        assert e.completion.endswith("Score: 5" if e.answer.right else "Score: 0")
    assert judge_examples(known(3, 30), render, limit=4, seed=0) != []
    assert sum(e.answer.right for e in judge_examples(known(3, 30), render, 4, 0)) == 2
    assert judge_examples(known(3, 3), render, limit=0, seed=0) == []
    assert judge_examples(known(2, 1), render, limit=10, seed=0).__len__() == 3
    assert judge_examples(known(9, 9), render, 6, 1) == judge_examples(known(9, 9), render, 6, 1)


def grade(task: str | None):
    return verify_integer if task == "add" else None


def test_contradicted_feedback_is_counted_not_trained_on() -> None:
    items = [
        FeedbackItem(Q, "8", -1, "9", "add", 1, "7"),  # a correction the grader calls wrong
        FeedbackItem(Q, "8", 1, None, "add", 2, "7"),  # a thumbs up on a wrong answer
        FeedbackItem(Q, "7", -1, None, "add", 3, "7"),  # a thumbs down on a right answer
        FeedbackItem(Q, "8", -1, "7", "add", 4, "7"),  # consistent correction
        FeedbackItem(Q, "7", 1, None, "add", 5, "7"),  # consistent thumbs up
        FeedbackItem(OPEN, "x", 1, None, "chat", 6, None),  # no grader: nothing to contradict
    ]
    checked = check_feedback(items, grade)
    assert [i.interaction_id for i in checked.contradictions] == [1, 2, 3]
    assert [i.interaction_id for i in checked.consistent] == [4, 5, 6]
    sft, pairs = feedback_data(checked.consistent)
    assert {e.completion for e in sft} == {"7", "x"} and "9" not in {e.completion for e in sft}
    assert {(p.chosen, p.rejected) for p in pairs} == {("7", "8")}
    assert [(k.response, k.right, k.source) for k in checked.known] == [
        ("7", True, "correction"),
        ("8", False, "correction"),
        ("7", True, "rating"),
        ("x", True, "rating"),
    ]


def test_feedback_without_the_task_format_is_a_contradiction() -> None:
    """A liked wordy answer or a wordy correction of a task answered with the number alone is
    not trained on, even where the prompt has no reference for the grader to check."""
    number = resolve_grader("regex:\\s*-?[0-9]+\\s*")

    def format_of(task: str | None):
        return number if task == "add" else None

    items = [
        FeedbackItem(Q, "The answer is 7.", 1, None, "add", 1),  # liked, wordy, no reference
        FeedbackItem(Q, "8", -1, "It is 7.", "add", 2),  # wordy correction
        FeedbackItem(Q, "7", 1, None, "add", 3),  # liked, in format
        FeedbackItem(Q, "The answer is 8.", -1, None, "add", 4),  # disliked wordy: kept
        FeedbackItem(OPEN, "Sure, x.", 1, None, "chat", 5),  # no format declared
    ]
    checked = check_feedback(items, grade, format_of)
    assert [i.interaction_id for i in checked.contradictions] == [1, 2]
    assert [i.interaction_id for i in checked.consistent] == [3, 4, 5]
    assert [i.interaction_id for i in check_feedback(items, grade).contradictions] == []


def test_a_known_reference_makes_a_reference_guided_verdict() -> None:
    """Feedback that carries the reference passes it on: the judge learns to state the
    right answer before its verdict (and a verdict without a reference stays short)."""
    items = [FeedbackItem(Q, "8", -1, "7", "add", 1, "7"), FeedbackItem(Q, "7", 1, None, "add", 2)]
    checked = check_feedback(items, grade)
    assert [k.reference for k in checked.known] == ["7", "7", None]
    examples = judge_examples(checked.known, render, limit=10, seed=0)
    completions = sorted(e.completion for e in examples)
    assert completions == [
        "Correct. Score: 5",
        "Should be 7. Correct. Score: 5",
        "Should be 7. Wrong. Score: 0",
    ]


def test_the_tasks_worked_line_replaces_the_bare_reference() -> None:
    """Where the task explains its reference (`Task.explain`), the verdict states the worked
    line; where it gives none, the reference alone."""
    answers = [
        KnownAnswer(Q, "8", False, "add", "grader", 0, 0, reference="7"),
        KnownAnswer(OPEN, "x", True, "chat", "rating", reference="y"),
    ]

    def explain(answer: KnownAnswer) -> str | None:
        return "Should be 3+4=7, got 8." if answer.task == "add" else None

    completions = sorted(e.completion for e in judge_examples(answers, render, 10, 0, explain))
    assert completions == [
        "Should be 3+4=7, got 8. Wrong. Score: 0",
        "Should be y. Correct. Score: 5",
    ]


def test_judge_pairs_differ_only_in_the_decision() -> None:
    examples = judge_examples(known(6, 6), render, limit=8, seed=0, explain=lambda a: "Sum 7.")
    pairs = judge_pairs(examples, limit=5)
    assert len(pairs) == 5
    for (prompt, chosen, rejected), e in zip(pairs, examples, strict=False):
        assert prompt == e.prompt and chosen == e.completion
        right = e.answer.right
        assert chosen == ("Sum 7. Correct. Score: 5" if right else "Sum 7. Wrong. Score: 0")
        assert rejected == ("Sum 7. Wrong. Score: 0" if right else "Sum 7. Correct. Score: 5")
    assert judge_pairs(examples, limit=0) == []
    assert len(judge_pairs(examples, limit=100)) == 8


def test_judge_training_rows_leave_out_the_judges_held_out_prompts() -> None:
    from daemon.judge_teaching import judge_training_data
    from judges.llm_judge import PointwiseJudge
    from judges.synth import SynthConfig, prompt_hash

    prompts = [[{"role": "user", "content": f"What is {i}+1?"}] for i in range(200)]
    answers = [
        KnownAnswer(p, str(i + 1), i % 2 == 0, "add", "correction", interaction_id=i)
        for i, p in enumerate(prompts)
    ]
    config = SynthConfig(judge_share=0.5, judge_holdout_percent=30)
    judge = PointwiseJudge(backend=None, template=COMPACT_POINTWISE_TEMPLATE)  # type: ignore[arg-type]
    sft, pairs = judge_training_data(
        answers, judge, config, answer_rows=(100, 40), explain=lambda a: None
    )
    assert len(sft) == 100 and len(pairs) == 40  # judge_share 0.5: as many as the others
    held = {i for i, p in enumerate(prompts) if in_judge_holdout(prompt_hash(p), 30)}
    assert 30 < len(held) < 90  # the split holds some of these prompts
    used = {row.interaction_id for row in sft} | {
        answers[int(p.prompt[-1]["content"].split("Q: What is ")[1].split("+")[0])].interaction_id
        for p in pairs
    }
    assert used and not used & held
    assert all(p.task == "judge" and p.origin == "judge" for p in pairs)
