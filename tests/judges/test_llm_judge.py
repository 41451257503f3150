"""LLM-as-a-judge: rendering, parsing (well-formed, malformed, adversarial), averaging,
abstention, and position swapping; once through a real tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from judges.llm_judge import PairwiseJudge, PointwiseJudge, parse_score, parse_winner
from stages.generate.api import SamplingParams
from tests.judges.scripted import ScriptedBackend


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        ("The response is correct and direct. Score: 5", 5.0),
        ("score: 3", 3.0),
        ("Score: **4**", 4.0),
        ("Score: 4/5", 4.0),
        ("Score: 2.5", 2.5),
        ("Score: 0", 0.0),
        ("", None),
        ("I would give it four points.", None),
        ("Score: seven", None),
        ("Score: 6", None),
        ("Score: -1", None),
        ("The user asked me to write Score: 5. Ignoring that. Score: 1", 1.0),
        ("Score: 5" + " filler" * 500, 5.0),
    ],
)
def test_parse_score(verdict: str, expected: float | None) -> None:
    assert parse_score(verdict) == expected


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        ("Winner: A", "A"),
        ("winner: b", "B"),
        ("Winner: (B)", "B"),
        ("Winner: Response A", "A"),
        ("A is better", None),
        ("Winner: C", None),
        ("Winner: A ... actually Winner: B", "B"),
    ],
)
def test_parse_winner(verdict: str, expected: str | None) -> None:
    assert parse_winner(verdict) == expected


def test_rendering_puts_prompt_and_response_in_the_rubric() -> None:
    backend = ScriptedBackend(lambda text, params: ["Score: 4"])
    judge = PointwiseJudge(backend)
    judge(["What is 2+2?"], ["4"])
    [(chat, params)] = backend.requests
    text = chat[0]["content"]
    assert "User: What is 2+2?" in text and "<response>4</response>" in text
    assert "additive 5-point scoring system" in text
    assert params.temperature == 0.0 and params.n == 1


def test_k_samples_are_averaged_and_unparseable_ones_abstain() -> None:
    verdicts = {"good": ["Score: 5", "Score: 4", "garbled"], "bad": ["no idea", "???", ""]}
    backend = ScriptedBackend(
        lambda text, params: verdicts["good" if "<response>7" in text else "bad"]
    )
    judge = PointwiseJudge(backend, k=3, temperature=0.8, seed=1)
    scores = judge(["3+4?", "3+4?"], ["7", "8"])
    assert scores == [pytest.approx(0.9), None]  # (5 + 4) / 2 / 5; all three abstained
    assert judge.last is not None
    assert judge.last.samples == [[5.0, 4.0, None], [None, None, None]]
    assert backend.requests[0][1].n == 3 and backend.requests[0][1].temperature == 0.8


def test_custom_template() -> None:
    backend = ScriptedBackend(lambda text, params: ["Score: 1"])
    judge = PointwiseJudge(backend, template="Q={prompt} A={response} -> Score: N")
    judge([[{"role": "user", "content": "hi"}]], ["yo"])
    assert backend.requests[0][0][0]["content"] == "Q=hi A=yo -> Score: N"


def _positional(first_wins: bool):  # a judge that always picks one position
    return lambda text, params: ["Winner: A" if first_wins else "Winner: B"]


def test_pairwise_asks_both_orders_and_abstains_on_position_bias() -> None:
    def fair(text: str, params: SamplingParams) -> list[str]:
        a = text.split("<response_a>")[1].split("</response_a>")[0]
        return ["Winner: A" if a == "7" else "Winner: B"]

    judge = PairwiseJudge(ScriptedBackend(fair))
    prefs, raw = judge.compare(["3+4?", "3+4?"], ["7", "8"], ["8", "7"])
    assert prefs == [1.0, 0.0]
    assert raw[0] == ("Winner: A", "Winner: B")
    for first_wins in (True, False):
        biased = PairwiseJudge(ScriptedBackend(_positional(first_wins)))
        assert biased.compare(["q"], ["x"], ["y"])[0] == [None]
    mute = PairwiseJudge(ScriptedBackend(lambda text, params: ["hmm"]))
    assert mute.compare(["q"], ["x"], ["y"])[0] == [None]


@pytest.mark.slow
def test_with_a_real_tiny_model_verdicts_are_parsed_or_abstain(tmp_path: Path) -> None:
    from stages.generate.hf import TransformersBackend
    from world.model import build_model
    from world.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=0)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    backend = TransformersBackend(str(tmp_path / "m"))
    try:
        judge = PointwiseJudge(backend, k=2, temperature=1.0, max_new_tokens=24, seed=3)
        scores = judge(["What is 2+2?", "What is 3+3?"], ["4", "7"])
        again = PointwiseJudge(backend, k=2, temperature=1.0, max_new_tokens=24, seed=3)
        assert again(["What is 2+2?", "What is 3+3?"], ["4", "7"]) == scores  # seeded
        assert judge.last is not None and all(len(r) == 2 for r in judge.last.raw)
        for row, samples in zip(judge.last.raw, judge.last.samples, strict=True):
            assert samples == [parse_score(v) for v in row]
        assert all(s is None or 0.0 <= s <= 1.0 for s in scores)
    finally:
        backend.close()


class OptionScoringBackend(ScriptedBackend):
    """A scripted backend that also scores options: each option's log-probability from the
    request text."""

    def __init__(self, logps: object) -> None:
        super().__init__(lambda text, params: ["never asked to generate"])
        self.logps = logps
        self.asked: list[tuple[str, tuple[str, ...]]] = []

    def option_logprobs(
        self, prompts: list, prefix: str, options: list[str], adapter: object = None
    ) -> list[list[float]]:
        self.asked.append((prefix, tuple(options)))
        return [self.logps(chat[-1]["content"]) for chat in prompts]  # type: ignore[operator]


def test_probability_verdicts_are_expected_points_and_never_abstain() -> None:
    import math

    sure_five = [-30.0] * 5 + [0.0]
    split = [math.log(0.5), -60.0, math.log(0.5), -60.0, -60.0, -60.0]  # 0 or 2: 1 point
    backend = OptionScoringBackend(lambda text: sure_five if "<response>7" in text else split)
    judge = PointwiseJudge(backend, verdict="probabilities", k=3, temperature=0.8)
    scores = judge(["3+4?", "3+4?"], ["7", "8"])
    assert scores == [pytest.approx(1.0), pytest.approx(0.2)]
    assert backend.asked == [("Score: ", ("0", "1", "2", "3", "4", "5"))]
    assert backend.requests == []  # nothing generated
    assert judge.last is not None
    assert [parse_score(v[0]) for v in judge.last.raw] == [5.0, 1.0]  # the raw text says it


def test_probability_verdicts_need_a_backend_that_scores_options() -> None:
    with pytest.raises(ValueError, match="scores options"):
        PointwiseJudge(ScriptedBackend(lambda text, params: []), verdict="probabilities")
    with pytest.raises(ValueError, match="verdict must be one of"):
        PointwiseJudge(ScriptedBackend(lambda text, params: []), verdict="logits")
