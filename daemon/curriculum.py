"""The curriculum: which stage the next cycle trains, SFT before DPO before RL.

It looks at the state of the data and the policy (a `CurriculumState`) and returns a
`Decision`: the stage, or none, and one sentence saying why, which the daemon logs and
stores. Thresholds are configuration (`[curriculum]`). It reads nothing itself; the
daemon measures the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["sft", "dpo", "rl"]


class CurriculumSettings(BaseModel):
    """Entry criteria of each stage."""

    model_config = ConfigDict(extra="forbid")

    min_sft_examples: int = Field(
        32, ge=1, description="Fresh SFT examples that make an SFT stage."
    )
    competence_floor: float = Field(
        0.5, ge=0, le=1, description="Format competence below which SFT comes first."
    )
    min_pairs: int = Field(32, ge=1, description="Fresh preference pairs that make a DPO stage.")
    min_rl_prompts: int = Field(
        16, ge=1, description="Verifiable prompts solved sometimes but not always, for RL."
    )
    allow_rl_zero: bool = Field(False, description="Allow RL on a policy that has had no SFT.")


@dataclass(frozen=True)
class CurriculumState:
    """What the curriculum decides from.

    format_competence: share of the policy's recent verifiable answers whose answer could
    be read at all (parsed), in [0, 1]; None when unmeasured.
    rl_prompts: verifiable prompts on which the policy succeeds sometimes but not always
    (the reward has variance there).
    """

    fresh_sft: int
    fresh_pairs: int
    rl_prompts: int
    sft_runs: int
    format_competence: float | None


@dataclass(frozen=True)
class Decision:
    stage: Stage | None
    reason: str


def decide(state: CurriculumState, settings: CurriculumSettings) -> Decision:
    """The next stage, in curriculum order, with the reason in one sentence."""
    s = settings
    # Unmeasured competence does not hold training back; measured and low does.
    competent = state.format_competence is None or state.format_competence >= s.competence_floor
    competence = (
        "unmeasured" if state.format_competence is None else f"{state.format_competence:.0%}"
    )
    if state.fresh_sft >= s.min_sft_examples:
        why = (
            "the policy has had no SFT yet"
            if state.sft_runs == 0
            else f"format competence is {competence}, below {s.competence_floor:.0%}"
            if not competent
            else "there is enough fresh SFT data"
        )
        return Decision(
            "sft", f"SFT: {state.fresh_sft} fresh SFT examples (>= {s.min_sft_examples}) and {why}."
        )
    if state.sft_runs == 0 and not (s.allow_rl_zero and state.rl_prompts >= s.min_rl_prompts):
        return Decision(
            None,
            f"Waiting: only {state.fresh_sft} fresh SFT examples (< {s.min_sft_examples}) and the "
            "policy has had no SFT, so neither DPO nor RL may run yet.",
        )
    if not competent and state.sft_runs > 0:
        return Decision(
            None,
            f"Waiting for SFT data: format competence is {competence}, below "
            f"{s.competence_floor:.0%}, and only {state.fresh_sft} fresh SFT examples "
            f"(< {s.min_sft_examples}).",
        )
    if state.sft_runs > 0 and state.fresh_pairs >= s.min_pairs:
        return Decision(
            "dpo",
            f"DPO: SFT has run and {state.fresh_pairs} fresh preference pairs "
            f"(>= {s.min_pairs}) exist.",
        )
    if state.rl_prompts >= s.min_rl_prompts:
        prefix = "RL-zero (allowed by config)" if state.sft_runs == 0 else "RL"
        return Decision(
            "rl",
            f"{prefix}: {state.rl_prompts} verifiable prompts are solved sometimes but not always "
            f"(>= {s.min_rl_prompts}), so the reward has variance.",
        )
    return Decision(
        None,
        f"Waiting: {state.fresh_sft} fresh SFT examples (< {s.min_sft_examples}), "
        f"{state.fresh_pairs} fresh pairs (< {s.min_pairs}) and {state.rl_prompts} prompts with "
        f"mixed success (< {s.min_rl_prompts}).",
    )
