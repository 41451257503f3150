"""The gate's maths on synthetic per-item vectors: clear regressions are rejected and named,
clear gains pass, noise is not a regression, require_gain, McNemar and the bootstrap."""

from __future__ import annotations

import json
import random

import pytest

from evals.evaluation import Evaluation, TaskScore
from evals.gate import GateRules, compare, gate, mcnemar_exact, paired_bootstrap_ci

N = 200


def production_items(task: str, correct: int, n: int = N, seed: int = 0) -> dict[str, float]:
    """`n` items of which `correct` (at random positions) score 1."""
    rng = random.Random(f"{task}:{seed}")
    hits = set(rng.sample(range(n), correct))
    return {f"{task}-{i:04d}": 1.0 if i in hits else 0.0 for i in range(n)}


def flip(items: dict[str, float], lose: int, win: int, seed: int = 1) -> dict[str, float]:
    """A copy with `lose` right answers made wrong and `win` wrong answers made right."""
    rng = random.Random(seed)
    right = [k for k, v in items.items() if v == 1.0]
    wrong = [k for k, v in items.items() if v == 0.0]
    out = dict(items)
    for k in rng.sample(right, lose):
        out[k] = 0.0
    for k in rng.sample(wrong, win):
        out[k] = 1.0
    return out


def runs(
    prod: dict[str, dict[str, float]], cand: dict[str, dict[str, float]], suite: str = "s" * 64
) -> tuple[Evaluation, Evaluation]:
    def make(tasks: dict[str, dict[str, float]], name: str | None) -> Evaluation:
        return Evaluation(
            base_model="base",
            adapter_name=name,
            adapter_hash=name or "base",
            base_fingerprint="b" * 64,
            suite_hash=suite,
            settings_hash="c" * 64,
            backend="hf",
            tasks={
                t: TaskScore(
                    task=t,
                    metric="exact_match",
                    filter="none",
                    score=sum(items.values()) / len(items),
                    stderr=None,
                    n=len(items),
                    items=items,
                )
                for t, items in tasks.items()
            },
            lm_eval_version="0.4.13",
            created_at="2026-01-01T00:00:00+00:00",
        )

    return make(prod, None), make(cand, "v2")


def test_clear_regression_is_rejected_and_named() -> None:
    add = production_items("add", 120)
    sub = production_items("sub", 100)
    prod, cand = runs({"add": add, "sub": sub}, {"add": add, "sub": flip(sub, lose=40, win=2)})
    result = gate(prod, cand, GateRules())
    assert not result.passed
    assert "sub" in result.reason and "add" not in result.reason
    assert result.reason.startswith("regression on sub")
    sub_cmp = result.task("sub")
    assert sub_cmp.regression and not sub_cmp.gain
    assert sub_cmp.n == N
    assert sub_cmp.delta == pytest.approx(-38 / N)
    assert sub_cmp.worsened == 40 and sub_cmp.improved == 2
    assert sub_cmp.p_value < 1e-6
    assert sub_cmp.ci_low <= sub_cmp.delta <= sub_cmp.ci_high < 0
    assert not result.task("add").regression
    assert result.regressions == ("sub",)
    json.dumps(result.to_dict())  # plain data for the database


def test_clear_gain_passes() -> None:
    add = production_items("add", 60)
    prod, cand = runs({"add": add}, {"add": flip(add, lose=3, win=45)})
    result = gate(prod, cand)
    assert result.passed
    assert result.task("add").gain and not result.task("add").regression
    assert result.task("add").ci_low > 0
    assert "add" in result.reason and "gain" in result.reason


@pytest.mark.parametrize(("lose", "win"), [(3, 1), (4, 0), (5, 2), (2, 3)])
def test_noise_is_not_a_regression(lose: int, win: int) -> None:
    add = production_items("add", 100)
    prod, cand = runs({"add": add}, {"add": flip(add, lose=lose, win=win)})
    # the regression rule alone, even with no tolerance at all
    result = gate(prod, cand, GateRules(tolerance=0.0, block_unseen=False))
    assert result.passed, result.reason
    assert not result.task("add").regression
    assert result.task("add").p_value >= 0.05
    # ... but 200 items cannot see a drop of 0 either: by default that silence blocks
    strict = gate(prod, cand, GateRules(tolerance=0.0))
    assert not strict.passed and strict.task("add").cannot_tell
    assert strict.reason.startswith("cannot tell whether add (200 items")
    # (the percentile bootstrap interval alone would not do here: with 4 losses and no win it
    # excludes 0, although the exact test gives p = 0.125; the interval is reported, the exact
    # test decides)


def test_tolerance_forgives_small_significant_drops() -> None:
    add = production_items("add", 150)
    cand = flip(add, lose=12, win=0)  # -0.06, p < 0.001
    assert not compare({"add": add}, {"add": cand}, GateRules(tolerance=0.02)).passed
    assert compare({"add": add}, {"add": cand}, GateRules(tolerance=0.1)).passed


def test_require_gain_on_target_tasks() -> None:
    add = production_items("add", 80)
    sub = production_items("sub", 80)
    prod = {"add": add, "sub": sub}
    cand = {"add": flip(add, lose=1, win=1), "sub": flip(sub, lose=0, win=40)}
    rules = {"block_unseen": False}  # the gain rule alone (80 items cannot see 2 points)
    on_add = compare(prod, cand, GateRules(require_gain=True, target_tasks=("add",), **rules))
    assert not on_add.passed
    assert "no significant gain on target task add" in on_add.reason
    on_sub = compare(prod, cand, GateRules(require_gain=True, target_tasks=("sub",), **rules))
    assert on_sub.passed and "sub" in on_sub.reason
    both = GateRules(require_gain=True, target_tasks=("add", "sub"), **rules)
    assert not compare(prod, cand, both).passed
    # no targets listed: a gain anywhere will do, none at all will not
    assert compare(prod, cand, GateRules(require_gain=True, **rules)).passed
    assert not compare(prod, prod, GateRules(require_gain=True, **rules)).passed
    # without require_gain a target task only has to hold steady
    assert compare(prod, cand, GateRules(target_tasks=("add",), **rules)).passed


def test_missing_results_fail_the_gate() -> None:
    add = production_items("add", 80)
    sub = production_items("sub", 80)
    result = compare({"add": add, "sub": sub}, {"add": add})
    assert not result.passed
    assert "sub" in result.reason and "no candidate results" in result.reason
    other_ids = {f"x{k}": v for k, v in add.items()}
    assert not compare({"add": add}, {"add": other_ids}).passed
    assert not compare({}, {}).passed


def test_only_the_gated_tasks_count() -> None:
    add = production_items("add", 100)
    sub = production_items("sub", 100)
    cand = {"add": add, "sub": flip(sub, lose=50, win=0)}
    assert not compare({"add": add, "sub": sub}, cand).passed
    only_add = GateRules(tasks=("add",), tolerance=0.1)  # 100 items see a 0.1 drop
    assert compare({"add": add, "sub": sub}, cand, only_add).passed


def test_paired_items_by_id_not_position() -> None:
    add = production_items("add", 100)
    shuffled = dict(reversed(list(add.items())))
    result = compare({"add": add}, {"add": shuffled})
    assert result.task("add").delta == 0 and result.task("add").p_value == 1.0


def test_runs_of_different_suites_are_refused() -> None:
    add = production_items("add", 100)
    prod, _ = runs({"add": add}, {"add": add}, suite="a" * 64)
    _, cand = runs({"add": add}, {"add": add}, suite="b" * 64)
    with pytest.raises(ValueError, match="different suites"):
        gate(prod, cand)


def test_mcnemar_matches_the_binomial_test() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for worse, better in [(0, 1), (1, 1), (3, 9), (10, 2), (25, 40), (100, 130), (0, 0)]:
        n = worse + better
        expected = 1.0 if n == 0 else scipy_stats.binomtest(worse, n, 0.5).pvalue
        assert mcnemar_exact(worse, better) == pytest.approx(expected, rel=1e-9)


def test_bootstrap_is_seeded_and_brackets_the_delta() -> None:
    add = production_items("add", 100)
    cand = flip(add, lose=10, win=25)
    prod_v, cand_v = list(add.values()), [cand[k] for k in add]
    first = paired_bootstrap_ci(prod_v, cand_v, resamples=2000, seed=7)
    assert first == paired_bootstrap_ci(prod_v, cand_v, resamples=2000, seed=7)
    assert first != paired_bootstrap_ci(prod_v, cand_v, resamples=2000, seed=8)
    delta = (sum(cand_v) - sum(prod_v)) / len(prod_v)
    assert first[0] < delta < first[1]
    assert paired_bootstrap_ci(prod_v, prod_v) == (0.0, 0.0)
    # the gate's interval is reproducible
    r1 = compare({"add": add}, {"add": cand})
    r2 = compare({"add": add}, {"add": cand})
    assert (r1.task("add").ci_low, r1.task("add").ci_high) == (
        r2.task("add").ci_low,
        r2.task("add").ci_high,
    )


def test_non_binary_scores_use_the_sign_test() -> None:
    prod = {f"i{k}": 0.5 for k in range(50)}
    cand = {f"i{k}": 0.4 for k in range(50)}
    result = compare({"f1": prod}, {"f1": cand}, GateRules(tolerance=0.05))
    assert not result.passed and result.task("f1").worsened == 50


def test_the_gate_says_what_it_cannot_see() -> None:
    """The smallest detectable drop shrinks with items and grows with discordance; a task
    whose items cannot see a drop of the tolerance is "cannot tell", which blocks promotion
    unless configured otherwise, and is reported per task."""
    from evals.gate import detectable_drop

    assert detectable_drop(400, 0, 0.05) < detectable_drop(100, 0, 0.05)
    assert detectable_drop(400, 80, 0.05) > detectable_drop(400, 0, 0.05)
    small = production_items("add", 30, n=60)
    result = compare({"add": small}, {"add": dict(small)}, GateRules(tolerance=0.05))
    assert not result.passed and result.task("add").cannot_tell
    assert result.task("add").detectable_drop > 0.05
    assert result.to_dict()["tasks"]["add"]["detectable_drop"] > 0.05
    allowed = compare({"add": small}, {"add": small}, GateRules(tolerance=0.05, block_unseen=False))
    assert allowed.passed and allowed.task("add").cannot_tell
    big = production_items("add", 300, n=600)
    seen = compare({"add": big}, {"add": dict(big)}, GateRules(tolerance=0.05))
    assert seen.passed and not seen.task("add").cannot_tell
    assert seen.task("add").detectable_drop < 0.05


def test_anchored_tasks_cannot_lose_more_than_the_tolerance_over_promotions() -> None:
    """Production already lost 12 of 400 retention items the base had; a candidate that
    loses 14 more is within the tolerance against production (-0.035) but not against the
    base (-0.065): the anchor refuses it, naming the base. One that loses 2 more passes."""
    from evals.gate import anchored

    n = 400
    base_items = production_items("retention", n, n=n)
    prod_items = flip(base_items, lose=12, win=0, seed=1)
    rules = GateRules(tolerance=0.05)
    for more, passes in ((14, False), (2, True)):
        lost = [k for k, v in prod_items.items() if v == 1.0][:more]
        cand_items = {**prod_items, **dict.fromkeys(lost, 0.0)}
        production, candidate = runs({"retention": prod_items}, {"retention": cand_items})
        base, _ = runs({"retention": base_items}, {}, suite="a" * 64)  # another suite's run
        result = gate(production, candidate, rules)
        assert not result.regressions  # within the tolerance against production
        held = anchored(result, base, candidate, ["retention"])
        assert result.passed and held.passed is passes
        assert "against the base model" in held.reason
        assert held.tasks == result.tasks  # the comparisons stay production's
        if not passes:
            assert held.reason.startswith("against the base model: regression on retention")
            assert "1.000 -> 0.935" in held.reason


def test_an_anchor_task_the_runs_lack_fails_the_gate() -> None:
    from evals.gate import anchored

    production, candidate = runs(
        {"add": production_items("add", 120)}, {"add": production_items("add", 120)}
    )
    held = anchored(gate(production, candidate), production, candidate, ["retention"])
    assert not held.passed and "retention (no production results)" in held.reason
