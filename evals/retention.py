"""The retention suite: general questions a base model already answers right, gated so that
teaching it something new cannot quietly cost what it knew.

`general_questions()` reads the questions shipped with tutord (`evals/data/
general_knowledge.jsonl`: capitals, opposites, plurals, calendar, chemistry, authors and
general facts, each with a short reference graded by `contains`). `known_to(backend, ...)`
asks a base model each question once (greedy) and keeps those it answers right: what the
model knew before tutord touched it. `write_prompts` writes them as a task's prompts file
(`[tasks.NAME] prompts = ...`), so the gate holds every candidate to them like any task.
It does not train, gate or choose which questions a user should care about.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from judges.graders import resolve_grader
from stages.atomic import write_atomic
from stages.generate.api import GenerationBackend, SamplingParams

DATA = Path(__file__).parent / "data" / "general_knowledge.jsonl"
GRADER = "contains"
MAX_NEW_TOKENS = 32
"""Long enough for a sentence that states the fact; the retention task's gate uses the same
length, so that what was kept is what the gate can see."""


@dataclass(frozen=True)
class Question:
    """One general question, its short reference, and its kind (capital, plural, ...)."""

    prompt: str
    reference: str
    kind: str


@dataclass(frozen=True)
class Kept:
    """What `known_to` kept: the questions answered right, and how many were asked."""

    questions: list[Question]
    asked: int
    answers: list[str]
    """The base's answer to each question asked, in order (for the record)."""

    @property
    def share(self) -> float:
        return len(self.questions) / self.asked if self.asked else 0.0


def general_questions(path: Path = DATA) -> list[Question]:
    """The shipped general questions (or those of another JSONL file in that shape)."""
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            questions.append(Question(row["prompt"], row["reference"], row.get("kind", "general")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a question row: {exc}") from exc
    return questions


def known_to(
    backend: GenerationBackend,
    questions: Sequence[Question],
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch: int = 32,
) -> Kept:
    """The questions `backend`'s model (no adapter) answers right, greedy, by `contains`."""
    grader = resolve_grader(GRADER)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    answers: list[str] = []
    for start in range(0, len(questions), batch):
        chunk = questions[start : start + batch]
        prompts = [[{"role": "user", "content": q.prompt}] for q in chunk]
        answers.extend(out[0] for out in backend.generate(prompts, params))
    scores = grader(
        [q.prompt for q in questions], answers, reference=[q.reference for q in questions]
    )
    kept = [q for q, score in zip(questions, scores, strict=True) if score == 1.0]
    return Kept(kept, len(questions), answers)


def write_prompts(questions: Sequence[Question], path: Path) -> Path:
    """The questions as a task's prompts file (`{"prompt", "reference"}` per line)."""
    lines = [json.dumps({"prompt": q.prompt, "reference": q.reference}) for q in questions]
    return write_atomic(path, "".join(line + "\n" for line in lines))
