"""Verifiers on right, wrong, malformed and reference-less rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from judges import verifiers as v


def test_exact_and_normalized() -> None:
    refs = ["Paris", "Paris", "Paris", None]
    comps = ["Paris", "paris.", "Lyon", "Paris"]
    assert v.exact_match(["q"] * 4, comps, reference=refs) == [1.0, 0.0, 0.0, None]
    assert v.normalized_match(["q"] * 4, comps, reference=refs) == [1.0, 1.0, 0.0, None]


def test_numeric_with_tolerance_and_malformed() -> None:
    comps = ["The answer is 12.", "12.0000000001", "-12", "twelve", "1,200", ""]
    refs = ["12", "12", "12", "12", "1200", "3"]
    assert v.numeric_match(["q"] * 6, comps, reference=refs) == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert v.numeric_match(["q"], ["0.11"], reference=["0.1"], abs_tol=0.02) == [1.0]


def test_math_verify_handles_latex_and_fractions() -> None:
    comps = ["$\\frac{3}{4}$", "\\boxed{0.75}", "3/5", "garbage ]]"]
    assert v.math_match(["q"] * 4, comps, reference=["0.75"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert v.math_match(["q"], ["1"], reference=[None]) == [None]


def test_regex_json_schema_and_length() -> None:
    fmt = v.regex_format(r"Answer: -?\d+")
    assert fmt(["q"] * 3, ["Answer: 5", "Answer: five", "answer: 5"]) == [1.0, 0.0, 0.0]
    search = v.regex_format(r"\d+", full=False)
    assert search(["q"] * 2, ["it is 5", "none"]) == [1.0, 0.0]
    schema = v.json_schema({"type": "object", "required": ["x"]})
    assert schema(["q"] * 3, ['{"x": 1}', "[1]", "{oops"]) == [1.0, 0.0, 0.0]
    with pytest.raises(Exception):  # noqa: B017 (jsonschema's SchemaError)
        v.json_schema({"type": 12})
    bounds = v.length_bounds(2, 4)
    assert bounds(["q"] * 3, ["a", " abc ", "abcde"]) == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        v.length_bounds(5, 2)


def test_conversational_completions_and_row_mismatch() -> None:
    comps = [[{"role": "assistant", "content": "42"}]]
    assert v.exact_match(["q"], comps, reference=["42"]) == [1.0]
    with pytest.raises(ValueError, match="rows"):
        v.exact_match(["q", "q"], ["1", "2"], reference=["1"])


def test_unknown_columns_are_ignored_like_trl_reward_functions() -> None:
    assert v.exact_match(["q"], ["1"], reference=["1"], task=["add"], trainer_state=None) == [1.0]


def test_a_graders_fingerprint_covers_every_module_of_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from judges.graders import grader_fingerprint

    pkg = tmp_path / "fpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from fpkg.impl import grade\n")
    (pkg / "impl.py").write_text("def grade(p, c, **k):\n    return [1.0 for _ in c]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = grader_fingerprint("fpkg:grade")
    (pkg / "impl.py").write_text("def grade(p, c, **k):\n    return [0.0 for _ in c]\n")
    assert grader_fingerprint("fpkg:grade") != before
