"""The curriculum's decision for each combination of data and competence."""

from __future__ import annotations

import pytest

from daemon.curriculum import CurriculumSettings, CurriculumState, decide

S = CurriculumSettings(min_sft_examples=10, competence_floor=0.5, min_pairs=10, min_rl_prompts=5)
MANY, FEW = 50, 1


@pytest.mark.parametrize(
    ("fresh_sft", "fresh_pairs", "rl_prompts", "sft_runs", "competence", "stage", "words"),
    [
        # Enough SFT data: SFT, whatever else there is.
        (MANY, MANY, MANY, 0, None, "sft", "no SFT yet"),
        (MANY, MANY, MANY, 2, 0.2, "sft", "below 50%"),
        (MANY, MANY, MANY, 2, 0.9, "sft", "enough fresh SFT data"),
        # No SFT ever and too little SFT data: nothing else may run.
        (FEW, MANY, MANY, 0, 0.9, None, "no SFT"),
        (FEW, FEW, FEW, 0, None, None, "no SFT"),
        # After SFT: not competent at the format and no SFT data to fix it: wait.
        (FEW, MANY, MANY, 1, 0.3, None, "below 50%"),
        # After SFT, competent: DPO when pairs exist, before RL.
        (FEW, MANY, MANY, 1, 0.9, "dpo", "pairs"),
        (FEW, MANY, FEW, 1, None, "dpo", "pairs"),
        # After SFT, no pairs: RL when the reward has variance.
        (FEW, FEW, MANY, 1, 0.9, "rl", "sometimes but not always"),
        (FEW, FEW, FEW, 1, 0.9, None, "Waiting"),
    ],
)
def test_decision_table(
    fresh_sft: int,
    fresh_pairs: int,
    rl_prompts: int,
    sft_runs: int,
    competence: float | None,
    stage: str | None,
    words: str,
) -> None:
    decision = decide(CurriculumState(fresh_sft, fresh_pairs, rl_prompts, sft_runs, competence), S)
    assert decision.stage == stage
    assert words in decision.reason
    assert decision.reason.endswith(".") and "\n" not in decision.reason  # one sentence


def test_rl_zero_only_when_allowed() -> None:
    state = CurriculumState(FEW, FEW, MANY, 0, None)
    assert decide(state, S).stage is None
    allowed = S.model_copy(update={"allow_rl_zero": True})
    decision = decide(state, allowed)
    assert decision.stage == "rl" and "RL-zero" in decision.reason
    # RL-zero still needs prompts with mixed success.
    assert decide(CurriculumState(FEW, FEW, FEW, 0, None), allowed).stage is None
