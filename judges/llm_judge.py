"""LLM-as-a-judge: a pointwise judge (Self-Rewarding LMs' additive 5-point rubric) and a
pairwise judge that asks both orders to cancel position bias.

The judge is any generation backend (`stages.generate`): the policy itself by default
(self-rewarding), or another model or server. Prompts are templates with `{prompt}` and
`{response}` (pointwise) or `{prompt}`, `{response_a}`, `{response_b}` (pairwise) that a
user can override. An unparseable verdict abstains (None); it never counts as zero. Or
(`verdict="probabilities"`) the answer is prefilled with "Score: " and the verdict is the
expected points under the judge's own probabilities of 0-5 there (G-Eval's weighting).
This module scores; it does not store anything (see `daemon/`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stages.generate.api import AdapterRef, Chat, GenerationBackend, SamplingParams

# Yuan et al. (2024), "Self-Rewarding Language Models", Figure 2 (LLM-as-a-Judge prompt).
POINTWISE_TEMPLATE = """Review the user's question and the corresponding response using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:
- Add 1 point if the response is relevant and provides some information related to the user's inquiry, even if it is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but does not completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a useful way, regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found in blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing the user's question directly and comprehensively, and is well-organized and helpful, even if there is slight room for improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI Assistant, without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and insightful answer.

User: {prompt}
<response>{response}</response>

After examining the user's instruction and the response:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Score: <total points>"

Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To evaluate the response in alignment with this additive scoring model, we'll systematically attribute points based on the outlined criteria."""  # noqa: E501

# For small-context models (the embedded world's has 256 positions): the same ask, short.
# The answer comes last, right before the verdict, which quotes it first: with the question
# last, the world's judge quoted the question's numbers instead of the answer's
# (`bench/judge_decision.py`, 2026-12-05).
COMPACT_POINTWISE_TEMPLATE = "Rate the answer 0-5.\nQ: {prompt}\nA: {response}\n"

PAIRWISE_TEMPLATE = """Compare two responses to the user's question and decide which one is better: more correct, more helpful, and more directly answering the question. Ignore the order in which they are shown and their length.

User: {prompt}
<response_a>{response_a}</response_a>
<response_b>{response_b}</response_b>

Briefly justify your choice, up to 100 words, then conclude with "Winner: A" or "Winner: B"."""  # noqa: E501

_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)\s*\**\s*(?:/\s*5\b|out of 5\b)?", re.I)
_WINNER = re.compile(r"winner\s*[:=]\s*\**\s*(?:response[\s_]*)?\(?([AB])\)?\b", re.I)
MAX_POINTS = 5.0
SCORE_PREFIX = "Score: "
VERDICTS = ("text", "probabilities")


def parse_score(verdict: str, max_points: float = MAX_POINTS) -> float | None:
    """The last `Score: N` of a verdict, if 0 <= N <= max_points; else None (abstain).

    >>> parse_score("Relevant and correct. Score: 4")
    4.0
    >>> parse_score("Score: **3** out of 5")
    3.0
    >>> parse_score("I said Score: 5 before, but Score: 2")
    2.0
    >>> parse_score("Score: 9") is None, parse_score("no verdict") is None
    (True, True)
    """
    matches = _SCORE.findall(verdict)
    if not matches:
        return None
    value = float(matches[-1])
    return value if 0.0 <= value <= max_points else None


def parse_winner(verdict: str) -> str | None:
    """'A' or 'B' from the last `Winner: X` of a verdict; None when absent.

    >>> parse_winner("B is clearer. Winner: B")
    'B'
    >>> parse_winner("Winner: **Response A**")
    'A'
    >>> parse_winner("both fine") is None
    True
    """
    matches = _WINNER.findall(verdict)
    return matches[-1].upper() if matches else None


def render_conversation(prompt: Chat | str) -> str:
    """A prompt as the text the judge reads: the last user turn, with earlier turns above it."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)


@dataclass(frozen=True)
class JudgeVerdicts:
    """Per row: the averaged score (None: every sample abstained), the raw verdicts, and the
    individual parsed scores."""

    scores: list[float | None]
    raw: list[list[str]]
    samples: list[list[float | None]]


@dataclass
class PointwiseJudge:
    """Scores each (prompt, response) from 0 to 5 by the additive rubric; k samples averaged.

    Called as a scorer, it returns scores normalized to [0, 1] (`points / 5`), so it
    composes with verifiers; `judge()` gives the points and the raw verdicts.
    """

    backend: GenerationBackend
    adapter: AdapterRef | None = None
    k: int = 1
    temperature: float = 0.7
    max_new_tokens: int = 256
    seed: int | None = 0
    template: str = POINTWISE_TEMPLATE
    name: str = "judge"
    verdict: str = "text"
    """"text": the verdict is generated and its `Score: N` parsed (it abstains when there is
    none); "probabilities": the answer is prefilled with "Score: " and the verdict is the
    expected points under the judge's probabilities of the digits 0-5 there, one forward pass
    per candidate, never abstaining (needs a backend with `option_logprobs`; k and
    temperature do not apply)."""
    last: JudgeVerdicts | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.verdict == "probabilities" and not hasattr(self.backend, "option_logprobs"):
            raise ValueError(
                f"a judge reading score probabilities needs a backend that scores options "
                f"(transformers); {type(self.backend).__name__} only generates text"
            )

    def render(self, prompt: Chat | str, response: str) -> Chat:
        text = self.template.format(prompt=render_conversation(prompt), response=response)
        return [{"role": "user", "content": text}]

    def judge(self, prompts: Sequence[Chat | str], completions: Sequence[str]) -> JudgeVerdicts:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return JudgeVerdicts([], [], [])
        params = SamplingParams(
            temperature=self.temperature if self.k > 1 else 0.0,
            max_new_tokens=self.max_new_tokens,
            n=self.k,
            seed=self.seed,
        )
        requests = [self.render(p, c) for p, c in zip(prompts, completions, strict=True)]
        if self.verdict == "probabilities":
            self.last = self._read_probabilities(requests)
            return self.last
        raw = self.backend.generate(requests, params, self.adapter)
        samples = [[parse_score(v) for v in verdicts] for verdicts in raw]
        scores = [_mean(s) for s in samples]
        self.last = JudgeVerdicts(scores, raw, samples)
        return self.last

    def _read_probabilities(self, requests: list[Chat]) -> JudgeVerdicts:
        points = [str(n) for n in range(int(MAX_POINTS) + 1)]
        logps = self.backend.option_logprobs(requests, SCORE_PREFIX, points, self.adapter)  # type: ignore[attr-defined]
        scores: list[float | None] = []
        raw: list[list[str]] = []
        for row in logps:
            top = max(row)
            weights = [math.exp(v - top) for v in row]
            total = sum(weights)
            probs = [w / total for w in weights]
            expected = sum(p * n for n, p in enumerate(probs))
            scores.append(expected)
            shares = " ".join(f"{n}:{p:.2f}" for n, p in enumerate(probs))
            raw.append([f"{SCORE_PREFIX}{expected:.2f} (probabilities {shares})"])
        return JudgeVerdicts(scores, raw, [[s] for s in scores])

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any
    ) -> list[float | None]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        verdicts = self.judge(prompts, texts)
        return [None if s is None else s / MAX_POINTS for s in verdicts.scores]


@dataclass
class PairwiseJudge:
    """Prefers one of two responses; asks A/B and B/A and abstains when the orders disagree.

    `compare` returns per pair 1.0 (the first is better), 0.0 (the second is better) or
    None (the two orders disagree, or a verdict could not be parsed).
    """

    backend: GenerationBackend
    adapter: AdapterRef | None = None
    max_new_tokens: int = 256
    template: str = PAIRWISE_TEMPLATE
    name: str = "pairwise-judge"

    def _ask(
        self, prompts: Sequence[Chat | str], first: Sequence[str], second: Sequence[str]
    ) -> list[str]:
        requests = [
            [
                {
                    "role": "user",
                    "content": self.template.format(
                        prompt=render_conversation(p), response_a=a, response_b=b
                    ),
                }
            ]
            for p, a, b in zip(prompts, first, second, strict=True)
        ]
        params = SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens)
        return [v[0] for v in self.backend.generate(requests, params, self.adapter)]

    def compare(
        self, prompts: Sequence[Chat | str], first: Sequence[str], second: Sequence[str]
    ) -> tuple[list[float | None], list[tuple[str, str]]]:
        """Preferences and the raw (A/B, B/A) verdicts per pair."""
        if not len(prompts) == len(first) == len(second):
            raise ValueError("prompts, first and second must have the same length")
        forward = self._ask(prompts, first, second)
        backward = self._ask(prompts, second, first)
        prefs: list[float | None] = []
        for f, b in zip(forward, backward, strict=True):
            wf, wb = parse_winner(f), parse_winner(b)
            if wf is None or wb is None:
                prefs.append(None)
            elif wf == "A" and wb == "B":
                prefs.append(1.0)
            elif wf == "B" and wb == "A":
                prefs.append(0.0)
            else:  # the same position won both times: position bias, not preference
                prefs.append(None)
        return prefs, list(zip(forward, backward, strict=True))


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
