"""Verifiers: pure functions that score completions against references or formats.

Every verifier has the call shape `(prompts, completions, **columns) -> list[float | None]`:
1.0 right, 0.0 wrong, None to abstain (no reference to check against). Columns are
per-row lists passed by keyword (`reference=[...]`); unknown columns are ignored, as
TRL's reward functions do. Factories (`regex_format`, `json_schema`, `length_bounds`)
return verifiers configured once. Code execution lives in `judges/sandbox/`.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable, Sequence
from typing import Any

Verifier = Callable[..., list[float | None]]

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def _text(completion: Any) -> str:
    """A completion as text: a string, or the last message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


def _references(n: int, reference: Sequence[str | None] | None) -> Sequence[str | None]:
    if reference is None:
        return [None] * n
    if len(reference) != n:
        raise ValueError(f"reference has {len(reference)} rows, completions have {n}")
    return reference


def normalize(text: str) -> str:
    """Lower-case, strip punctuation at the ends and collapse whitespace.

    >>> normalize("  The Answer:  Paris. ")
    'the answer: paris'
    """
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


def exact_match(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    reference: Sequence[str | None] | None = None,
    **_: Any,
) -> list[float | None]:
    """1.0 when the completion equals the reference after stripping outer whitespace.

    >>> exact_match(["q", "q", "q"], ["42", " 42\\n", "41"], reference=["42", "42", "42"])
    [1.0, 1.0, 0.0]
    >>> exact_match(["q"], ["42"], reference=[None])
    [None]
    """
    refs = _references(len(completions), reference)
    return [
        None if ref is None else float(_text(c).strip() == ref.strip())
        for c, ref in zip(completions, refs, strict=True)
    ]


def normalized_match(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    reference: Sequence[str | None] | None = None,
    **_: Any,
) -> list[float | None]:
    """1.0 when completion and reference agree after `normalize` (case, spaces, end punctuation).

    >>> normalized_match(["q", "q"], ["Paris.", "paris, france"], reference=["paris", "Paris"])
    [1.0, 0.0]
    """
    refs = _references(len(completions), reference)
    return [
        None if ref is None else float(normalize(_text(c)) == normalize(ref))
        for c, ref in zip(completions, refs, strict=True)
    ]


def contains_match(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    reference: Sequence[str | None] | None = None,
    **_: Any,
) -> list[float | None]:
    """1.0 when the reference appears in the completion as whole words, case and spacing
    aside: for short facts answered in a sentence.

    >>> contains_match(["q"] * 3, ["The capital is Paris.", "Parisian", "paris"],
    ...                reference=["Paris"] * 3)
    [1.0, 0.0, 1.0]
    """
    refs = _references(len(completions), reference)
    out: list[float | None] = []
    for c, ref in zip(completions, refs, strict=True):
        if ref is None or not normalize(ref):
            out.append(None)
            continue
        pattern = r"(?<!\w)" + re.escape(normalize(ref)) + r"(?!\w)"
        out.append(float(re.search(pattern, " ".join(_text(c).lower().split())) is not None))
    return out


def last_number(text: str) -> float | None:
    """The last number written in `text` (thousands separators allowed), or None.

    >>> last_number("3 + 4 is 7.")
    7.0
    >>> last_number("about 1,234.5 units")
    1234.5
    >>> last_number("no digits here") is None
    True
    """
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    try:
        return float(matches[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_match(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    reference: Sequence[str | float | None] | None = None,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
    **_: Any,
) -> list[float | None]:
    """1.0 when the last number in the completion equals the reference within tolerance.

    A completion without a number scores 0.0; a row without a usable reference abstains.

    >>> numeric_match(["q"] * 4, ["It is 7.", "7.0000001", "8", "none"], reference=["7"] * 4)
    [1.0, 1.0, 0.0, 0.0]
    >>> numeric_match(["q"], ["7"], reference=["seven"])
    [None]
    """
    refs = _references(len(completions), reference)  # type: ignore[arg-type]
    scores: list[float | None] = []
    for c, ref in zip(completions, refs, strict=True):
        expected = ref if isinstance(ref, float | int) else (last_number(ref) if ref else None)
        if expected is None or (isinstance(expected, float) and math.isnan(expected)):
            scores.append(None)
            continue
        got = last_number(_text(c))
        ok = got is not None and math.isclose(got, expected, rel_tol=rel_tol, abs_tol=abs_tol)
        scores.append(float(ok))
    return scores


def math_match(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    reference: Sequence[str | None] | None = None,
    **_: Any,
) -> list[float | None]:
    """1.0 when `math-verify` finds the completion's answer equal to the reference.

    Handles LaTeX (`\\frac{1}{2}`, `\\boxed{..}`), fractions and plain numbers. A reference
    math-verify cannot parse abstains; an unparseable completion scores 0.0.

    >>> answers = ["$\\\\frac{1}{2}$", "\\\\boxed{0.5}", "1/3"]
    >>> math_match(["q"] * 3, answers, reference=["0.5"] * 3)
    [1.0, 1.0, 0.0]
    """
    from math_verify import parse, verify

    refs = _references(len(completions), reference)
    scores: list[float | None] = []
    for c, ref in zip(completions, refs, strict=True):
        if ref is None:
            scores.append(None)
            continue
        gold = parse(ref if "$" in ref or "\\" in ref else f"${ref}$")
        if not gold:
            scores.append(None)
            continue
        answer = parse(_text(c))
        scores.append(float(bool(answer) and verify(gold, answer)))
    return scores


def regex_format(pattern: str, *, flags: int = re.DOTALL, full: bool = True) -> Verifier:
    """A verifier scoring 1.0 when the completion matches `pattern` (whole text by default).

    >>> has_answer_line = regex_format(r".*Answer: \\d+\\s*")
    >>> has_answer_line(["q", "q"], ["work... Answer: 12", "12"])
    [1.0, 0.0]
    """
    compiled = re.compile(pattern, flags)
    match = compiled.fullmatch if full else compiled.search

    def regex_format(
        prompts: Sequence[Any], completions: Sequence[Any], **_: Any
    ) -> list[float | None]:
        return [float(match(_text(c)) is not None) for c in completions]

    return regex_format


def _strip_fence(text: str) -> str:
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    return fenced.group(1) if fenced else text


def json_schema(schema: dict[str, Any]) -> Verifier:
    """A verifier scoring 1.0 when the completion (or its ```json block) is JSON valid
    against `schema` (JSON Schema, checked with `jsonschema`).

    >>> schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    >>> v = json_schema(schema)
    >>> v(["q"] * 3, ['{"a": 1}', '```json\\n{"a": "x"}\\n```', 'not json'])
    [1.0, 0.0, 0.0]
    """
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)

    def json_schema(
        prompts: Sequence[Any], completions: Sequence[Any], **_: Any
    ) -> list[float | None]:
        scores: list[float | None] = []
        for c in completions:
            try:
                value = json.loads(_strip_fence(_text(c)))
            except (json.JSONDecodeError, RecursionError):
                scores.append(0.0)
                continue
            scores.append(float(validator.is_valid(value)))
        return scores

    return json_schema


def length_bounds(min_chars: int = 0, max_chars: int | None = None) -> Verifier:
    """A verifier scoring 1.0 when the completion's length (stripped) is within bounds.

    >>> v = length_bounds(1, 5)
    >>> v(["q"] * 3, ["", "abc", "abcdef"])
    [0.0, 1.0, 0.0]
    """
    if min_chars < 0 or (max_chars is not None and max_chars < min_chars):
        raise ValueError(f"bad bounds: min_chars={min_chars}, max_chars={max_chars}")

    def length_bounds(
        prompts: Sequence[Any], completions: Sequence[Any], **_: Any
    ) -> list[float | None]:
        out: list[float | None] = []
        for c in completions:
            n = len(_text(c).strip())
            out.append(float(n >= min_chars and (max_chars is None or n <= max_chars)))
        return out

    return length_bounds
