"""The retention suite: the shipped general questions, and keeping those the base knows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.retention import Question, general_questions, known_to, write_prompts
from stages.generate.api import AdapterRef, Chat, SamplingParams


class ScriptedBackend:
    """Answers each question from a table (the base model's knowledge, scripted)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.params: list[SamplingParams] = []

    def generate(
        self, prompts: list[Chat], params: SamplingParams, adapter: AdapterRef | None = None
    ) -> list[list[str]]:
        assert adapter is None  # the base, never an adapter
        self.params.append(params)
        return [[self.answers.get(p[-1]["content"], "I do not know.")] for p in prompts]

    def close(self) -> None:
        pass


def test_the_shipped_questions_are_a_few_hundred_distinct_facts() -> None:
    questions = general_questions()
    assert len(questions) >= 300
    assert len({q.prompt for q in questions}) == len(questions)
    assert all(q.reference.strip() and q.prompt.endswith("?") for q in questions)
    assert len({q.kind for q in questions}) >= 6
    # nothing the arithmetic demo tasks teach
    assert not [q for q in questions if any(w in q.prompt for w in ("+", " plus ", " minus "))]


def test_a_question_the_base_gets_wrong_is_left_out(tmp_path: Path) -> None:
    questions = [
        Question("What is the capital of France?", "Paris", "capital"),
        Question("What is the plural of mouse?", "mice", "plural"),
        Question("What is the opposite of hot?", "cold", "opposite"),
    ]
    backend = ScriptedBackend(
        {
            "What is the capital of France?": "The capital of France is Paris.",
            "What is the plural of mouse?": "The plural of mouse is mouses.",
        }
    )
    kept = known_to(backend, questions, batch=2)
    assert [q.prompt for q in kept.questions] == ["What is the capital of France?"]
    assert kept.asked == 3 and kept.share == pytest.approx(1 / 3)
    assert kept.answers[1] == "The plural of mouse is mouses."
    assert all(p.temperature == 0 for p in backend.params) and len(backend.params) == 2
    path = write_prompts(kept.questions, tmp_path / "retention.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"prompt": "What is the capital of France?", "reference": "Paris"}]


def test_a_bad_line_names_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"prompt": "a?", "reference": "b"}\n{"prompt": "c?"}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:2: not a question row"):
        general_questions(path)
