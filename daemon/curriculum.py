"""The curriculum: which stage the next cycle trains, SFT before DPO before RL.

It looks at the state of the data and the policy (a `CurriculumState`) and returns a
`Decision`: the stage, or none, and one sentence saying why, which names every entry
criterion with its value and its threshold (and the setting that holds the threshold), and
which the daemon prints and stores. Thresholds are configuration (`[curriculum]`). It reads
nothing itself; the daemon measures the state (`daemon/stage_choice.py`).

The rule, first match wins ("trained": the production line has had an SFT stage; "parse
rate low": measured and below `parse_floor`; an unmeasured parse rate, when no live task
declares an answer format, never holds training back):

1. SFT when there are `min_sft_examples` fresh SFT examples and the policy is not trained
   or its parse rate is low: SFT teaches the format.
2. Not trained and too little SFT data: wait; only RL-zero may run (`allow_rl_zero` and
   `min_rl_prompts` prompts whose reward varies).
3. SFT when a task has `min_sft_examples` fresh SFT examples and no SFT stage on the
   production line has trained on it yet (a newly arrived task is taught before it is
   refined).
4. Trained but the parse rate is low and SFT data too few: wait for SFT data (preference
   pairs and rewards on answers that do not parse teach little).
5. RL when DPO trained the production adapter and `min_rl_prompts` verifiable prompts are
   solved sometimes but not always, unless the newest finished cycle was an RL the gate
   rejected: the curriculum's order is SFT, then DPO, then RL, so preference data that
   keeps arriving (every correction makes a pair) does not hold RL back for ever.
6. DPO when there are `min_pairs` fresh preference pairs, unless the newest finished cycle
   was a DPO the gate rejected: then a stage that is ready steps in (RL, else SFT) before
   DPO is tried again; the same holds for RL.
7. RL when `min_rl_prompts` verifiable prompts are solved sometimes but not always (the
   reward has variance there).
8. SFT again when there are `min_sft_examples` fresh SFT examples and neither DPO nor RL is
   ready: fresh SFT data alone never holds DPO or RL back once answers parse.
9. Otherwise wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["sft", "dpo", "rl"]


class CurriculumSettings(BaseModel):
    """Entry criteria of each stage."""

    model_config = ConfigDict(extra="forbid")

    min_sft_examples: int = Field(
        32, ge=1, description="Fresh SFT examples that make an SFT stage."
    )
    parse_floor: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "Parse rate (share of the latest synthesis run's answers that have their task's "
            "answer_format, right or wrong) below which SFT comes first and DPO and RL wait."
        ),
    )
    min_pairs: int = Field(32, ge=1, description="Fresh preference pairs that make a DPO stage.")
    min_rl_prompts: int = Field(
        16, ge=1, description="Verifiable prompts solved sometimes but not always, for RL."
    )
    allow_rl_zero: bool = Field(False, description="Allow RL on a policy that has had no SFT.")


@dataclass(frozen=True)
class CurriculumState:
    """What the curriculum decides from.

    parse_rate: share of the latest synthesis run's answers, among those whose task
    declares an `answer_format`, that have that format (they parse, right or wrong), in
    [0, 1]; None when no answer's task declares one.
    rl_prompts: verifiable prompts on which the policy succeeds sometimes but not always
    (the reward has variance there).
    sft_runs: SFT stages on the production line (production and its ancestors).
    A task that arrives later (a new family, a new user task) with enough fresh SFT data
    and no SFT stage on the production line yet gets SFT first: SFT teaches a task,
    DPO and RL refine it.
    """

    fresh_sft: int
    fresh_pairs: int
    rl_prompts: int
    sft_runs: int
    parse_rate: float | None
    fresh_sft_by_task: Mapping[str, int] = field(default_factory=dict)
    """Fresh SFT examples per task label (judge-training examples not included)."""
    sft_tasks: frozenset[str] = frozenset()
    """Tasks an SFT stage on the production line has trained on."""
    last_rejected: str | None = None
    """The stage of the newest finished cycle when the gate rejected it (else None)."""
    production_stage: str | None = None
    """The stage that trained the production adapter (None: production is the base)."""


@dataclass(frozen=True)
class Decision:
    stage: Stage | None
    reason: str


def _cmp(value: float, threshold: float) -> str:
    return ">=" if value >= threshold else "<"


def _percent(value: float, other: float) -> str:
    """`value` as a percentage, with as many decimals as it takes to differ from `other`.

    >>> _percent(0.35, 0.5), _percent(0.4996, 0.5), _percent(0.5, 0.5)
    ('35%', '49.96%', '50%')
    """
    for digits in range(5):
        text = f"{value:.{digits}%}"
        if value == other or text != f"{other:.{digits}%}":
            return text
    return f"{value:%}"


def untrained_tasks(state: CurriculumState, settings: CurriculumSettings) -> list[str]:
    """Tasks with at least `min_sft_examples` fresh SFT examples that no SFT stage on the
    production line has trained on.

    >>> state = CurriculumState(90, 0, 0, 1, 1.0, {"add": 50, "sub": 40}, frozenset({"add"}))
    >>> untrained_tasks(state, CurriculumSettings())
    ['sub']
    """
    return sorted(
        task
        for task, n in state.fresh_sft_by_task.items()
        if n >= settings.min_sft_examples and task not in state.sft_tasks
    )


def criteria(state: CurriculumState, settings: CurriculumSettings) -> list[str]:
    """Every entry criterion with its value and threshold, as the reason states them.

    >>> state = CurriculumState(40, 3, 20, 0, 0.35)
    >>> criteria(state, CurriculumSettings())  # doctest: +NORMALIZE_WHITESPACE
    ['40 fresh SFT examples >= 32 (min_sft_examples)', 'parse rate 35% < 50% (parse_floor)',
     '0 SFT runs on the production line < 1', '3 fresh pairs < 32 (min_pairs)',
     '20 prompts solved sometimes but not always >= 16 (min_rl_prompts)',
     'allow_rl_zero false']
    """
    s = state
    c = settings
    parse = (
        f"parse rate unmeasured, floor {c.parse_floor:.0%} (parse_floor)"
        if s.parse_rate is None
        else f"parse rate {_percent(s.parse_rate, c.parse_floor)} "
        f"{_cmp(s.parse_rate, c.parse_floor)} {c.parse_floor:.0%} (parse_floor)"
    )
    out = [
        f"{s.fresh_sft} fresh SFT examples {_cmp(s.fresh_sft, c.min_sft_examples)} "
        f"{c.min_sft_examples} (min_sft_examples)",
        parse,
        f"{s.sft_runs} SFT run{'' if s.sft_runs == 1 else 's'} on the production line "
        f"{_cmp(s.sft_runs, 1)} 1",
        f"{s.fresh_pairs} fresh pairs {_cmp(s.fresh_pairs, c.min_pairs)} {c.min_pairs} (min_pairs)",
        f"{s.rl_prompts} prompts solved sometimes but not always "
        f"{_cmp(s.rl_prompts, c.min_rl_prompts)} {c.min_rl_prompts} (min_rl_prompts)",
    ]
    if s.sft_runs == 0:
        out.append(f"allow_rl_zero {str(c.allow_rl_zero).lower()}")
    if s.production_stage is not None:
        out.append(f"production was trained by {s.production_stage.upper()}")
    if s.last_rejected is not None:
        out.append(f"the last {s.last_rejected.upper()} cycle was rejected")
    if s.sft_runs and s.fresh_sft_by_task:
        new = untrained_tasks(s, c)
        out.append(
            "tasks with fresh SFT data and no SFT yet: "
            + (", ".join(f"{t} ({s.fresh_sft_by_task[t]})" for t in new) or "none")
        )
    return out


def decide(state: CurriculumState, settings: CurriculumSettings) -> Decision:
    """The next stage by the rule in the module docstring, with the reason in one sentence:
    the verdict, then every criterion with its value and threshold."""
    s = settings
    sft_ready = state.fresh_sft >= s.min_sft_examples
    pairs_ready = state.fresh_pairs >= s.min_pairs
    rl_ready = state.rl_prompts >= s.min_rl_prompts
    trained = state.sft_runs > 0
    parse_low = state.parse_rate is not None and state.parse_rate < s.parse_floor

    def said(stage: Stage | None, verdict: str) -> Decision:
        return Decision(stage, f"{verdict}: {'; '.join(criteria(state, s))}.")

    if sft_ready and not trained:
        return said("sft", "SFT (the policy has had no SFT yet)")
    if sft_ready and parse_low:
        return said("sft", "SFT (too few answers parse)")
    if untrained_tasks(state, s):
        names = ", ".join(untrained_tasks(state, s))
        return said("sft", f"SFT (a task has fresh SFT data and no SFT yet: {names})")
    if not trained:
        if s.allow_rl_zero and rl_ready:
            return said("rl", "RL-zero (allowed by config; the reward has variance)")
        return said(None, "Waiting (no SFT yet and too little SFT data; DPO and RL need SFT)")
    if parse_low:
        return said(None, "Waiting for SFT data (too few answers parse for DPO or RL)")
    if rl_ready and state.production_stage == "dpo" and state.last_rejected != "rl":
        return said("rl", "RL (DPO trained production, and the reward has variance)")
    if pairs_ready and state.last_rejected != "dpo":
        return said("dpo", "DPO (SFT has run, answers parse, enough fresh pairs)")
    if rl_ready and state.last_rejected != "rl":
        return said("rl", "RL (SFT has run, answers parse, enough prompts whose reward varies)")
    if sft_ready and state.last_rejected is not None and state.last_rejected != "sft":
        return said("sft", f"SFT again (the last {state.last_rejected.upper()} was rejected)")
    if pairs_ready:
        return said("dpo", "DPO (SFT has run, answers parse, enough fresh pairs)")
    if rl_ready:
        return said("rl", "RL (SFT has run, answers parse, enough prompts whose reward varies)")
    if sft_ready:
        return said("sft", "SFT again (neither DPO nor RL is ready, enough fresh SFT data)")
    return said(None, "Waiting (no stage has enough fresh data)")
