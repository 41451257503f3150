"""Synthesis: candidates, scores, SFT threshold, best-vs-worst pairs, judge health, feedback."""

from __future__ import annotations

from pathlib import Path

import pytest

from judges.feedback import FeedbackItem, feedback_data
from judges.llm_judge import PointwiseJudge
from judges.synth import (
    PromptItem,
    SynthConfig,
    SynthResult,
    self_instruct,
    synthesize,
)
from stages.generate.api import GenerationBackend, SamplingParams
from tests.judges.scripted import ScriptedBackend
from world.verify import verify_integer

Q = [{"role": "user", "content": "What is 3+4?"}]
OPEN = [{"role": "user", "content": "Tell me something about seven."}]


def policy(answers: dict[str, list[str]]) -> ScriptedBackend:
    """Candidates by prompt text; judge verdicts when asked to judge."""

    def reply(text: str, params: SamplingParams) -> list[str]:
        for key, out in answers.items():
            if key in text:
                return out[: params.n]
        raise AssertionError(f"unscripted request: {text[:80]}")

    return ScriptedBackend(reply)


def verifier_for(task: str | None):
    return verify_integer if task == "add" else None


def synth(
    prompts: list[PromptItem],
    backend: GenerationBackend,
    config: SynthConfig,
    judge: PointwiseJudge | None = None,
) -> SynthResult:
    """`synthesize` from the base (no adapter), "add" answers checked by `verify_integer`."""
    return synthesize(
        prompts, backend, adapter=None, verifier_for=verifier_for, judge=judge, config=config
    )


def test_scores_threshold_and_pairs() -> None:
    backend = policy({"What is 3+4?": ["7", "3+4=7", "8", "12"]})
    result = synth([PromptItem(Q, "add", "7")], backend, SynthConfig(n=4, seed=1))
    assert [c.scores["verifier"] for c in result.candidates] == [1.0, 1.0, 0.0, 0.0]
    assert [e.completion for e in result.sft] == ["7", "3+4=7"]
    [pair] = result.pairs
    assert (pair.chosen, pair.rejected, pair.margin, pair.judge_decided) == ("7", "8", 1.0, False)
    assert (pair.chosen_index, pair.rejected_index) == (0, 2)
    assert backend.requests[0][1].n == 4 and backend.requests[0][1].temperature == 0.8


def test_ties_are_dropped() -> None:
    backend = policy({"3+4": ["7", "7.0", "7 ", "seven is 7"]})
    result = synth([PromptItem(Q, "add", "7")], backend, SynthConfig(n=4))
    assert result.pairs == [] and result.dropped_ties == 1
    assert len(result.sft) == 4


def _judged(verdict_for_right: str, verdict_for_wrong: str) -> ScriptedBackend:
    def reply(text: str, params: SamplingParams) -> list[str]:
        if "<response>" in text:
            answer = text.split("<response>")[1].split("</response>")[0]
            return [verdict_for_right if answer in ("7", "seven") else verdict_for_wrong]
        if "3+4" in text:
            return ["7", "8", "9", "7"][: params.n]
        return ["seven", "blue", "seven", "blue"][: params.n]

    return ScriptedBackend(reply)


@pytest.mark.parametrize(
    ("right", "wrong", "healthy"), [("Score: 5", "Score: 1", True), ("Score: 1", "Score: 5", False)]
)
def test_judge_health_gates_judge_decided_pairs(right: str, wrong: str, healthy: bool) -> None:
    backend = _judged(right, wrong)
    prompts = [PromptItem(Q, "add", "7")] * 3 + [PromptItem(OPEN, "chat", None)]
    result = synth(
        prompts,
        backend,
        SynthConfig(n=4, min_agreement_rows=5, judge_holdout_percent=0),
        PointwiseJudge(backend),
    )
    health = result.health
    assert health.judged == 16 and health.abstentions == 0 and health.agreement_rows == 12
    assert health.agreement == (1.0 if healthy else 0.0)
    assert health.ok is healthy
    decided = [p for p in result.pairs if p.judge_decided]
    if healthy:
        assert [(p.chosen, p.rejected) for p in decided] == [("seven", "blue")]
    else:
        assert decided == [] and "JUDGE UNRELIABLE" in health.message
    # Verifiable prompts still give pairs either way (the verifier outweighs the judge).
    assert sum(1 for p in result.pairs if not p.judge_decided) == 3


def test_a_judge_that_passes_everything_is_held_to_balanced_agreement() -> None:
    """Nine right answers in ten: a judge that says 'Score: 5' to all agrees on 90% of
    them, fails no wrong answer, and is refused (balanced agreement 50%)."""

    def reply(text: str, params: SamplingParams) -> list[str]:
        if "<response>" in text:
            return ["Score: 5"]
        return (["7"] * 9 + ["8"])[: params.n]

    backend = ScriptedBackend(reply)
    result = synth(
        [PromptItem(Q, "add", "7")],
        backend,
        SynthConfig(n=10, judge_holdout_percent=0),
        PointwiseJudge(backend),
    )
    health = result.health
    assert (health.agreement, health.passes_right, health.fails_wrong) == (0.9, 1.0, 0.0)
    assert health.balanced == 0.5 and health.ok is False
    assert "fails 0% of wrong ones: balanced 50%" in health.message


@pytest.mark.parametrize("healthy", [True, False])
def test_a_pair_of_two_wrong_answers_is_judge_decided(healthy: bool) -> None:
    """Equal verifier scores do not order a pair: the judge alone does, so the pair follows
    the judge-health floor and says so in its provenance."""
    scores = {"7": 5, "8": 1, "5": 5, "6": 0} if healthy else {"7": 1, "8": 5, "5": 5, "6": 0}

    def reply(text: str, params: SamplingParams) -> list[str]:
        if "<response>" in text:
            answer = text.split("<response>")[1].split("</response>")[0]
            return [f"Score: {scores[answer]}"]
        if "3+4" in text:
            return ["7", "8", "7", "8"][: params.n]
        return ["5", "6", "5", "6"][: params.n]

    backend = ScriptedBackend(reply)
    two_plus_two = [{"role": "user", "content": "What is 2+2?"}]
    result = synth(
        [PromptItem(Q, "add", "7"), PromptItem(two_plus_two, "add", "4")],
        backend,
        SynthConfig(n=4, pair_margin=0.1, judge_holdout_percent=0),
        PointwiseJudge(backend),
    )
    assert result.health.ok is healthy
    both_wrong = [p for p in result.pairs if p.prompt == two_plus_two]
    if healthy:
        assert [(p.chosen, p.rejected, p.judge_decided) for p in both_wrong] == [("5", "6", True)]
    else:
        assert both_wrong == []
    verified = [p for p in result.pairs if p.prompt == Q]
    assert [(p.chosen, p.rejected, p.judge_decided) for p in verified] == [("7", "8", False)]


def test_judge_health_is_measured_on_prompts_held_out_from_judge_training() -> None:
    from judges.judge_training import in_judge_holdout
    from judges.synth import prompt_hash

    questions = [[{"role": "user", "content": f"What is {i}+1?"}] for i in range(20)]

    def reply(text: str, params: SamplingParams) -> list[str]:
        if "<response>" in text:
            return ["Score: 5"]
        i = int(text.split("What is ")[1].split("+")[0])
        return [str(i + 1), str(i + 2)][: params.n]

    backend = ScriptedBackend(reply)
    result = synth(
        [PromptItem(q, "add", str(i + 1)) for i, q in enumerate(questions)],
        backend,
        SynthConfig(n=2, judge_holdout_percent=40),
        PointwiseJudge(backend),
    )
    held = [q for q in questions if in_judge_holdout(prompt_hash(q), 40)]
    assert 0 < len(held) < len(questions)
    assert result.health.agreement_rows == 2 * len(held)  # only held-out prompts measured
    assert result.health.agreement == 0.5  # "Score: 5" for everything: right half the time
    assert len(result.known) == 2 * (len(questions) - len(held))
    assert not [k for k in result.known if k.prompt in held]
    assert {k.right for k in result.known} == {True, False}


def test_length_bias_is_measured() -> None:
    def reply(text: str, params: SamplingParams) -> list[str]:
        if "<response>" in text:
            answer = text.split("<response>")[1].split("</response>")[0]
            return [f"Score: {min(5, len(answer))}"]
        return ["a", "bb", "ccc", "dddd"][: params.n]

    backend = ScriptedBackend(reply)
    result = synth([PromptItem(OPEN, None, None)], backend, SynthConfig(), PointwiseJudge(backend))
    assert result.health.length_correlation == pytest.approx(1.0)
    assert result.health.ok is False  # nothing verifiable: agreement unknown


def test_feedback_becomes_data() -> None:
    items = [
        FeedbackItem(Q, "8", rating=-1, correction="7", task="add", interaction_id=1),
        FeedbackItem(Q, "7", rating=1, task="add", interaction_id=2),
        FeedbackItem(Q, "9", rating=-1, task="add", interaction_id=3),
        FeedbackItem(OPEN, "x", rating=1, interaction_id=4),
    ]
    sft, pairs = feedback_data(items)
    assert [(e.completion, e.origin, e.interaction_id) for e in sft] == [
        ("7", "feedback", 1),
        ("7", "feedback", 2),
        ("x", "feedback", 4),
    ]
    assert sorted((p.chosen, p.rejected) for p in pairs) == [("7", "8"), ("7", "8"), ("7", "9")]
    assert all(p.origin == "feedback" for p in pairs)


def test_self_instruct_dedupes() -> None:
    outs = iter(["What is 2+2?", "what is 2+2?  ", "What is 5+1?", "", "What is 3+4?"])
    backend = ScriptedBackend(lambda text, params: [next(outs)])
    new = self_instruct(
        backend, None, ["What is 3+4?", "What is 1+1?"], n=5, seed=0, known={"What is 3+4?"}
    )
    assert new == ["What is 2+2?", "What is 5+1?"]


@pytest.mark.slow
def test_same_seed_same_result_with_a_real_tiny_model(tmp_path: Path) -> None:
    from stages.generate.hf import TransformersBackend
    from world.model import build_model
    from world.tokenizer import build_tokenizer

    tok = build_tokenizer()
    build_model(tok, seed=0).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    prompts = [
        PromptItem(Q, "add", "7"),
        PromptItem([{"role": "user", "content": "2+2?"}], "add", "4"),
    ]
    runs = []
    for _ in range(2):
        backend = TransformersBackend(str(tmp_path / "m"))
        try:
            judge = PointwiseJudge(backend, max_new_tokens=16)
            config = SynthConfig(n=3, max_new_tokens=8, seed=5)
            runs.append(synth(prompts, backend, config, judge))
        finally:
            backend.close()
    assert runs[0].candidates == runs[1].candidates
    assert len(runs[0].candidates) == 6
    assert runs[0].health == runs[1].health
