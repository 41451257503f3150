"""What scores a synthesis run's answers: the judge's rubric prompt and the tasks' graders.

`default_template` picks the rubric prompt the judge gets (the full one when it fits the
judge's context, else the compact one); `verifier_for` and `format_for` resolve a task
label to its grader and its answer-format grader (`judges.graders`).

It does not score, judge or store anything: `judges/` scores, and `daemon/synth_run.py`
runs the synthesis and stores what it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from daemon.home import Home
from daemon.policy import base_model, context_length
from daemon.settings import Settings
from daemon.tasks import grader_spec
from judges.graders import resolve_grader
from judges.llm_judge import COMPACT_POINTWISE_TEMPLATE, POINTWISE_TEMPLATE
from judges.tasks import Task
from stages.generate.api import GenerationBackend

log = logging.getLogger(__name__)

COMPACT_RUBRIC_BELOW = 512
"""A served judge (no tokenizer here) whose context is shorter than this many tokens gets the
compact rubric prompt."""
RUBRIC_QUESTION_ALLOWANCE = 128
"""Tokens left for the question in the full rubric prompt when deciding whether it fits."""


def verifier_for(
    settings: Settings, tasks: dict[str, Task]
) -> Callable[[str | None], Callable[..., list[float | None]] | None]:
    """The grader of a task label (`daemon.tasks.grader_spec`), resolved."""

    def pick(task: str | None) -> Callable[..., list[float | None]] | None:
        spec = grader_spec(settings, tasks, task)
        return None if spec is None else resolve_grader(spec)

    return pick


def format_for(
    tasks: dict[str, Task],
) -> Callable[[str | None], Callable[..., list[float | None]] | None]:
    """The answer-format grader of a task label (`Task.answer_format`), resolved; None for a
    label whose task declares no format."""

    def pick(task: str | None) -> Callable[..., list[float | None]] | None:
        spec = tasks[task].answer_format if task in tasks else None
        return None if spec is None else resolve_grader(spec)

    return pick


def default_template(home: Home, settings: Settings, judge: GenerationBackend) -> str:
    """The rubric prompt: the full one when it fits the judge's context, else the compact one.

    With the judge's tokenizer at hand (a local backend), the full rubric fits when its
    rendered chat, in the judge's own tokens, leaves room for the question
    (`RUBRIC_QUESTION_ALLOWANCE`), the answer (`synth.max_new_tokens`) and the verdict
    (`judge.max_new_tokens`) within the context: a 512-token model with a small vocabulary
    may need 1,000 tokens for the rubric alone, past the positions it has (vLLM refuses such
    a prompt; transformers reads it with positions it never learnt). Without a tokenizer (a
    served judge) only the context length decides: compact below `COMPACT_RUBRIC_BELOW`
    tokens (the embedded world's model reads 256 characters).
    """
    judge_model = settings.judge.base or base_model(home, settings)
    length = context_length(judge_model)
    if length is None:
        return POINTWISE_TEMPLATE
    tokenizer = getattr(judge, "tokenizer", None)
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        return COMPACT_POINTWISE_TEMPLATE if length < COMPACT_RUBRIC_BELOW else POINTWISE_TEMPLATE
    from stages.generate.chat import render_prompts

    rubric = POINTWISE_TEMPLATE.format(prompt="", response="")
    [text] = render_prompts(tokenizer, [[{"role": "user", "content": rubric}]])
    # Measured, never fed to the model: no "longer than the maximum length" warning.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    needed = (
        len(ids)
        + RUBRIC_QUESTION_ALLOWANCE
        + settings.synth.max_new_tokens
        + settings.judge.max_new_tokens
    )
    if needed > length:
        log.info(
            "the judge's context (%d tokens) is too short for the full rubric (%d tokens with "
            "room for a question, an answer and the verdict): the compact rubric",
            length,
            needed,
        )
        return COMPACT_POINTWISE_TEMPLATE
    return POINTWISE_TEMPLATE
