"""Graders named by a short spec string, and a reward that grades each row with its own.

A task names its grader in text so that a configuration file, a dataset row or an lm-eval
metric module can carry it: `exact`, `normalized`, `numeric`, `math`, `regex:PATTERN`
(the whole completion must match), `json_schema:FILE` (a JSON Schema file) or
`module:function` (any importable callable with the verifier call shape
`(prompts, completions, **columns) -> list[float | None]`). `resolve_grader` turns a spec
into that callable (cached); `check_grader_spec` validates a spec without importing user
code; `by_row_grader` is a TRL-style reward function that grades each row with the grader
named in its `grader` column, so one RL dataset can mix tasks. It does not know any task.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from judges import verifiers
from judges.verifiers import Verifier
from stages.dotted import import_object

BUILTIN: dict[str, Verifier] = {
    "exact": verifiers.exact_match,
    "normalized": verifiers.normalized_match,
    "contains": verifiers.contains_match,
    "numeric": verifiers.numeric_match,
    "math": verifiers.math_match,
}
_MODULE_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class GraderError(ValueError):
    """A grader spec that names nothing usable; the message quotes the spec."""


def check_grader_spec(spec: str) -> str:
    """`spec` when it is well formed (a known name, a compilable regex, a module:function
    path, a json_schema file that exists); GraderError otherwise. Imports nothing.

    >>> check_grader_spec("numeric")
    'numeric'
    >>> check_grader_spec("regex:[0-9]+")
    'regex:[0-9]+'
    >>> check_grader_spec("fuzzy")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    judges.graders.GraderError: grader 'fuzzy': expected one of exact, normalized, ...
    """
    if spec in BUILTIN:
        return spec
    if spec.startswith("regex:"):
        try:
            re.compile(spec.removeprefix("regex:"))
        except re.error as exc:
            raise GraderError(f"grader {spec!r}: not a regular expression: {exc}") from exc
        return spec
    if spec.startswith("json_schema:"):
        path = Path(spec.removeprefix("json_schema:"))
        if not path.is_file():
            raise GraderError(f"grader {spec!r}: no schema file at {path}")
        return spec
    if _MODULE_FUNCTION.match(spec):
        return spec
    raise GraderError(
        f"grader {spec!r}: expected one of {', '.join(BUILTIN)}, regex:PATTERN, "
        "json_schema:FILE or module:function"
    )


@cache
def resolve_grader(spec: str) -> Verifier:
    """The grader callable a spec names (see the module docstring).

    >>> resolve_grader("numeric")(["q"], ["it is 18"], reference=["18"])
    [1.0]
    >>> resolve_grader("regex:[0-9]+")(["q", "q"], ["42", "x42"])
    [1.0, 0.0]
    """
    check_grader_spec(spec)
    if spec in BUILTIN:
        return BUILTIN[spec]
    if spec.startswith("regex:"):
        return verifiers.regex_format(spec.removeprefix("regex:"))
    if spec.startswith("json_schema:"):
        path = Path(spec.removeprefix("json_schema:"))
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise GraderError(f"grader {spec!r}: cannot read the schema: {exc}") from exc
        return verifiers.json_schema(schema)
    try:
        target = import_object(spec)
    except (ImportError, AttributeError) as exc:
        raise GraderError(f"grader {spec!r}: cannot import it: {exc}") from exc
    if not callable(target):
        raise GraderError(f"grader {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def grader_fingerprint(spec: str) -> str:
    """sha256 of what defines a grader's behaviour: the spec, and the source of the module
    that implements it (so a changed grader changes every hash that includes it)."""
    if spec in BUILTIN or spec.startswith("regex:"):
        source = inspect.getsource(verifiers)
    elif spec.startswith("json_schema:"):
        source = Path(spec.removeprefix("json_schema:")).read_text(encoding="utf-8")
    else:
        source = _module_source(importlib.import_module(spec.partition(":")[0]))
    return hashlib.sha256(f"{spec}\x1f{source}".encode()).hexdigest()


def _module_source(module: Any) -> str:
    """A module's source; for a package, every `.py` file in it (by relative path)."""
    if not hasattr(module, "__path__"):
        return inspect.getsource(module)
    files = sorted(p for root in module.__path__ for p in Path(root).rglob("*.py"))
    root = Path(next(iter(module.__path__)))
    return "\x1e".join(f"{p.relative_to(root)}\x1f{p.read_text(encoding='utf-8')}" for p in files)


def by_row_grader(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    grader: Sequence[str | None] | None = None,
    **columns: Any,
) -> list[float | None]:
    """Grade row i with the grader named in `grader[i]` (None abstains); other columns
    (`reference`, ...) are passed through row by row. A reward function for TRL's GRPO.

    >>> by_row_grader(["q", "q", "q"], ["18", "19", "x"], grader=["numeric", "exact", None],
    ...               reference=["18", "18", "1"])
    [1.0, 0.0, None]
    """
    n = len(completions)
    if grader is None:
        return [None] * n
    if len(grader) != n:
        raise ValueError(f"grader has {len(grader)} rows, completions have {n}")
    out: list[float | None] = []
    for i, spec in enumerate(grader):
        if spec is None:
            out.append(None)
            continue
        row = {
            k: [v[i]]
            for k, v in columns.items()
            if isinstance(v, Sequence) and not isinstance(v, str) and len(v) == n
        }
        out.append(resolve_grader(spec)([prompts[i]], [completions[i]], **row)[0])
    return out
