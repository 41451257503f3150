"""The world's verifier: does a completion end with the reference integer?

`final_integer` pulls the last integer out of free text ("The answer is 7." -> 7, "3+4=7" ->
7, "-3" -> -3, "1,024" -> 1024, "7.0" -> 7); `verify_integer` scores completions against the
`reference` column with the call shape every judge and verifier shares:
`(prompts, completions, **columns) -> list[float | None]`; `has_integer` is the world's
answer format (does an answer end in an integer at all, right or wrong: a parse check). It
is pure: no model, no I/O.
It does not parse the prompt (the reference is the ground truth) and does not give partial
credit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

# A number not glued to a digit or decimal point on its left: in "12-5" the minus is an
# operator, so the last number is 5, not -5. Thousands separators and decimals are allowed.
_NUMBER = re.compile(r"(?<![\d.,])-?\d+(?:,\d{3})*(?:\.\d+)?")
_MINUS_SIGNS = str.maketrans({"−": "-", "–": "-"})


def completion_text(completion: Any) -> str:
    """The text of a completion: a string as it is, or the last message's `content` of a
    conversational completion (a list of `{"role", "content"}` dicts, as TRL passes them).

    >>> completion_text("7")
    '7'
    >>> completion_text([{"role": "assistant", "content": "It is 7."}])
    'It is 7.'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion:
        last = completion[-1]
        if isinstance(last, dict) and isinstance(last.get("content"), str):
            return last["content"]
    return ""


def final_integer(text: str) -> int | None:
    """The last number in `text` if it is an integer, else None (no number, or 7.5).

    >>> final_integer("The answer is 7.")
    7
    >>> final_integer("3+4=7")
    7
    >>> final_integer("12-5")
    5
    >>> final_integer("It is -3")
    -3
    >>> final_integer("1,024 apples")
    1024
    >>> final_integer("7.0")
    7
    >>> final_integer("7.5") is None
    True
    >>> final_integer("seven") is None
    True
    """
    matches = _NUMBER.findall(text.translate(_MINUS_SIGNS))
    if not matches:
        return None
    try:
        value = Decimal(matches[-1].replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern only matches numbers
        return None
    return int(value) if value == value.to_integral_value() else None


def verify_integer(
    prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
) -> list[float | None]:
    """1.0 where a completion's final integer equals the reference, 0.0 where it does not
    (or has none), None where there is no reference (no `reference` column, or a None or
    non-integer entry). `prompts` is accepted for the shared call shape and unused.

    >>> verify_integer(["q"] * 4, ["The answer is 7.", "8", "no idea", "7"],
    ...                reference=["7", "7", "7", None])
    [1.0, 0.0, 0.0, None]
    >>> verify_integer(["q"], ["7"])
    [None]
    """
    references = columns.get("reference")
    if references is None:
        return [None] * len(completions)
    if len(references) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(references)} references")
    scores: list[float | None] = []
    for completion, reference in zip(completions, references, strict=True):
        expected = None if reference is None else final_integer(str(reference))
        if expected is None:
            scores.append(None)
            continue
        got = final_integer(completion_text(completion))
        scores.append(1.0 if got == expected else 0.0)
    return scores


def has_integer(
    prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
) -> list[float | None]:
    """1.0 where a completion parses as a world answer (`final_integer` finds an integer),
    right or wrong, else 0.0: the world's tasks' `answer_format`. Columns are ignored.

    >>> has_integer(["q"] * 4, ["The answer is 7.", "8", "no idea", "7.5"])
    [1.0, 1.0, 0.0, 0.0]
    """
    return [float(final_integer(completion_text(c)) is not None) for c in completions]
