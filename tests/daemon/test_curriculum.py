"""The curriculum's decision for each combination of data and parse rate; every reason
states each criterion with its value and threshold."""

from __future__ import annotations

import pytest

from daemon.curriculum import CurriculumSettings, CurriculumState, criteria, decide

S = CurriculumSettings(min_sft_examples=10, parse_floor=0.5, min_pairs=10, min_rl_prompts=5)
MANY, FEW = 50, 1


@pytest.mark.parametrize(
    ("fresh_sft", "fresh_pairs", "rl_prompts", "sft_runs", "parse", "stage", "words"),
    [
        # Enough SFT data and no SFT yet: SFT, whatever else there is.
        (MANY, MANY, MANY, 0, None, "sft", "no SFT yet"),
        (MANY, MANY, MANY, 0, 0.9, "sft", "no SFT yet"),
        # Enough SFT data after SFT: SFT only while too few answers parse.
        (MANY, MANY, MANY, 2, 0.2, "sft", "too few answers parse"),
        (MANY, MANY, MANY, 2, 0.9, "dpo", "enough fresh pairs"),
        (MANY, FEW, MANY, 2, 0.9, "rl", "reward varies"),
        (MANY, MANY, MANY, 2, None, "dpo", "enough fresh pairs"),
        # No SFT ever and too little SFT data: nothing else may run.
        (FEW, MANY, MANY, 0, 0.9, None, "no SFT yet"),
        (FEW, FEW, FEW, 0, None, None, "no SFT yet"),
        # After SFT, answers do not parse and no SFT data to fix it: wait.
        (FEW, MANY, MANY, 1, 0.3, None, "Waiting for SFT data"),
        # After SFT, answers parse: DPO when pairs exist, before RL.
        (FEW, MANY, MANY, 1, 0.9, "dpo", "enough fresh pairs"),
        (FEW, MANY, FEW, 1, None, "dpo", "enough fresh pairs"),
        # After SFT, no pairs: RL when the reward has variance.
        (FEW, FEW, MANY, 1, 0.9, "rl", "reward varies"),
        # Neither DPO nor RL is ready: fresh SFT data makes SFT again, else wait.
        (MANY, FEW, FEW, 1, 0.9, "sft", "SFT again"),
        (FEW, FEW, FEW, 1, 0.9, None, "no stage has enough fresh data"),
    ],
)
def test_decision_table(
    fresh_sft: int,
    fresh_pairs: int,
    rl_prompts: int,
    sft_runs: int,
    parse: float | None,
    stage: str | None,
    words: str,
) -> None:
    state = CurriculumState(fresh_sft, fresh_pairs, rl_prompts, sft_runs, parse)
    decision = decide(state, S)
    assert decision.stage == stage
    assert words in decision.reason
    assert decision.reason.endswith(".") and "\n" not in decision.reason  # one sentence
    # Every criterion is stated, with its value and threshold.
    for criterion in criteria(state, S):
        assert criterion in decision.reason
    assert f"{fresh_sft} fresh SFT examples" in decision.reason
    assert "(min_sft_examples)" in decision.reason and "(min_pairs)" in decision.reason
    assert "(min_rl_prompts)" in decision.reason and "(parse_floor)" in decision.reason
    if parse is not None:
        assert f"parse rate {parse:.0%} {'<' if parse < 0.5 else '>='} 50%" in decision.reason


def test_the_reason_reads_like_the_docs() -> None:
    state = CurriculumState(40, 3, 2, 1, 0.35)
    decision = decide(state, CurriculumSettings())
    assert decision.stage == "sft"
    assert decision.reason == (
        "SFT (too few answers parse): 40 fresh SFT examples >= 32 (min_sft_examples); "
        "parse rate 35% < 50% (parse_floor); 1 SFT run on the production line >= 1; "
        "3 fresh pairs < 32 (min_pairs); 2 prompts solved sometimes but not always < 16 "
        "(min_rl_prompts)."
    )
    unmeasured = decide(CurriculumState(0, 0, 0, 0, None), CurriculumSettings())
    assert "parse rate unmeasured, floor 50% (parse_floor)" in unmeasured.reason
    assert "allow_rl_zero false" in unmeasured.reason


def test_a_rate_just_under_the_floor_is_not_printed_as_the_floor() -> None:
    decision = decide(CurriculumState(0, 0, 0, 1, 0.4996), S)
    assert "parse rate 49.96% < 50%" in decision.reason


def test_rl_zero_only_when_allowed() -> None:
    state = CurriculumState(FEW, FEW, MANY, 0, None)
    assert decide(state, S).stage is None
    allowed = S.model_copy(update={"allow_rl_zero": True})
    decision = decide(state, allowed)
    assert decision.stage == "rl" and "RL-zero" in decision.reason
    assert "allow_rl_zero true" in decision.reason
    # RL-zero still needs prompts with mixed success.
    assert decide(CurriculumState(FEW, FEW, FEW, 0, None), allowed).stage is None


def test_a_rejected_stage_steps_aside_once() -> None:
    """After the gate rejected a DPO cycle, a ready RL (else SFT) goes first; DPO comes back
    when nothing else is ready, and a rejected RL gives DPO its turn."""
    s = CurriculumSettings(min_sft_examples=4, min_pairs=4, min_rl_prompts=4)
    ready = {"fresh_sft": 10, "fresh_pairs": 10, "sft_runs": 1, "parse_rate": 0.9}
    assert decide(CurriculumState(rl_prompts=10, **ready), s).stage == "dpo"
    after_dpo = decide(CurriculumState(rl_prompts=10, last_rejected="dpo", **ready), s)
    assert after_dpo.stage == "rl" and "the last DPO cycle was rejected" in after_dpo.reason
    no_rl = decide(CurriculumState(rl_prompts=0, last_rejected="dpo", **ready), s)
    assert no_rl.stage == "sft" and "the last DPO was rejected" in no_rl.reason
    only_pairs = {**ready, "fresh_sft": 0}
    assert decide(CurriculumState(rl_prompts=0, last_rejected="dpo", **only_pairs), s).stage == (
        "dpo"
    )
    assert decide(CurriculumState(rl_prompts=10, last_rejected="rl", **ready), s).stage == "dpo"


def test_rl_follows_dpo_while_pairs_keep_arriving() -> None:
    """SFT, then DPO, then RL: once DPO trained production, RL goes next when its reward
    varies, though pairs are plenty; then DPO again; a rejected RL gives DPO its turn."""
    s = CurriculumSettings(min_sft_examples=4, min_pairs=4, min_rl_prompts=4)
    ready = {"fresh_sft": 10, "fresh_pairs": 10, "sft_runs": 1, "parse_rate": 0.9}
    after_sft = decide(CurriculumState(rl_prompts=10, production_stage="sft", **ready), s)
    assert after_sft.stage == "dpo" and "production was trained by SFT" in after_sft.reason
    after_dpo = decide(CurriculumState(rl_prompts=10, production_stage="dpo", **ready), s)
    assert after_dpo.stage == "rl" and "DPO trained production" in after_dpo.reason
    assert "production was trained by DPO" in after_dpo.reason
    no_variance = CurriculumState(rl_prompts=1, production_stage="dpo", **ready)
    assert decide(no_variance, s).stage == "dpo"
    after_rl = decide(CurriculumState(rl_prompts=10, production_stage="rl", **ready), s)
    assert after_rl.stage == "dpo"
    rejected = CurriculumState(rl_prompts=10, production_stage="dpo", last_rejected="rl", **ready)
    assert decide(rejected, s).stage == "dpo"
