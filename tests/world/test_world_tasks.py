"""Task families, the verifier, the held-out split and the release schedule."""

from __future__ import annotations

import doctest

import pytest

from world import schedule, split, verify
from world.config import WorldConfig
from world.schedule import live_families
from world.split import split_of
from world.tasks import families, get_family
from world.verify import final_integer, verify_integer

FAMILIES = ["add", "sub", "mul"]


@pytest.mark.parametrize("module", [verify, split, schedule])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", FAMILIES)
def test_verifier_right_wrong_malformed_and_abstain(name: str) -> None:
    family = get_family(name)
    problem = family.problem(7, 3, phrasing=1)
    right = problem.answer
    wrong = str(int(right) + 1)
    completions = [
        right,
        f"The answer is {right}.",
        f"{problem.a}{family.symbol}{problem.b}={right}",
        wrong,
        f"I think it is {wrong}.",
        "no idea",
        "",
        right,
    ]
    references = [right] * 7 + [None]
    scores = family.verify([problem.prompt] * 8, completions, reference=references)
    assert scores == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, None]
    assert family.verify([problem.prompt], [right]) == [None]  # no reference column
    assert family.score([right, wrong], [problem, problem]) == [1.0, 0.0]


def test_verifier_accepts_conversational_completions() -> None:
    completions = [[{"role": "assistant", "content": "It is 12."}]]
    assert verify_integer(["q"], completions, reference=["12"]) == [1.0]


def test_final_integer_edge_cases() -> None:
    assert final_integer("3+4=7\n") == 7
    assert final_integer("20-25=-5") == -5
    assert final_integer("12-5") == 5
    assert final_integer("−4") == -4
    assert final_integer("1.5") is None
    assert final_integer("") is None


def test_answers() -> None:
    fams = families()
    assert fams["add"].answer(3, 4) == "7"
    assert fams["sub"].answer(12, 5) == "7"
    assert fams["mul"].answer(6, 7) == "42"
    assert fams["sub"].problem(12, 5).worked == "12-5=7"
    assert all(b <= a for a, b in fams["sub"].operand_pairs)
    assert max(max(p) for p in fams["mul"].operand_pairs) == 12


def test_operand_ranges_are_config() -> None:
    fams = families(WorldConfig(add_max=5, sub_max=4, mul_max=3))
    assert len(fams["add"].operand_pairs) == 36
    assert max(max(p) for p in fams["mul"].operand_pairs) == 3
    with pytest.raises(ValueError):
        WorldConfig(add_max=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_prompts_deterministic_under_seed(name: str) -> None:
    family = get_family(name)
    first = family.sample_problems(50, seed=7)
    assert first == family.sample_problems(50, seed=7)
    assert first != family.sample_problems(50, seed=8)
    assert len({p.phrasing for p in first}) > 1  # several phrasings
    assert all(p.split == "train" for p in first)
    for p in first:
        assert str(p.a) in p.prompt and str(p.b) in p.prompt


def test_heldout_split_is_stable() -> None:
    # Fixed expectations: the split must never change between versions or machines.
    assert split_of("How much is 0 plus 0?") == "heldout"
    assert split_of("Compute 0 plus 6.") == "heldout"
    assert split_of("What is 0+0?") == "train"
    assert split_of("Compute 0 plus 0.") == "train"
    prompts = [p.prompt for p in get_family("add").all_problems()]
    share = sum(split_of(p) == "heldout" for p in prompts) / len(prompts)
    assert 0.22 < share < 0.28
    # Growing the held-out share only ever moves training prompts to held-out: a prompt
    # held out under the old 10% is held out still, so nothing evaluated was trained on.
    assert all(split_of(p) == "heldout" for p in prompts if split_of(p, 10) == "heldout")


def test_heldout_sample() -> None:
    family = get_family("add")
    held = family.sample_problems(200, seed=1, split="heldout", unique=True)
    assert len(held) == 200 and len({p.prompt for p in held}) == 200
    assert all(split_of(p.prompt) == "heldout" for p in held)


def test_release_schedule() -> None:
    assert live_families(0) == ["add"]
    assert live_families(1) == ["add", "sub"]
    assert live_families(2) == ["add", "sub", "mul"]
    assert live_families(1, {"mul": 0, "add": 1}) == ["mul", "add"]
    assert WorldConfig().release == {"add": 0, "sub": 1, "mul": 2}


@pytest.mark.parametrize("name", FAMILIES)
def test_every_phrasing_explains_as_the_corpus_writes_equations(name: str) -> None:
    """`Task.explain` reads the operands of every phrasing in order (the judge's worked
    verdict depends on it) and refuses a reference the operands do not give."""
    from world.pack import arith_tasks

    task = {t.name: t for t in arith_tasks(99)}[name]
    family = get_family(name)
    symbol = family.symbol
    for item in task.pool(60, 0):
        reference = str(item.reference)
        line = task.explain(item.text, reference, f"It is {reference}")  # type: ignore[misc]
        assert line is not None and line.endswith(f"={reference} vs {reference}: same."), item.text
        said, worked = line.split(". ", 1)
        assert said == f"Said {reference}"  # the answer's number, quoted first
        a, b = worked.split("=")[0].split(symbol)
        assert family.op(int(a), int(b)) == int(reference)
        assert task.explain(item.text, str(int(reference) + 1), "") is None  # type: ignore[misc]
    unread = task.explain(item.text, reference, "no idea")  # type: ignore[misc]
    assert unread is not None and unread.startswith("Said none. ")
    assert unread.endswith(" vs none: different.")
    off = int(reference) + 1
    wrong = task.explain(item.text, reference, f"{item.text} {off}")  # type: ignore[misc]
    assert wrong == f"Said {off}. {worked.split(' vs ')[0]} vs {off}: different."
