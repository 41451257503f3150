"""Plain values passed from the worker to the parent, and compared without program code.

`_encode` (in the worker) turns a value into tagged JSON-like data, refusing anything but
plain data of exact types: None, bool, int, float, complex, str, bytes, the builtin types
of `_PLAIN_TYPES`, and lists, tuples, sets, frozensets and dicts of them, read without
running any code of the value's class. `_decode` (in the parent) rebuilds the value;
`_compare` is one comparison of two plain values, used on both sides.

These functions are shipped into the harness as source (`harness._SHIPPED`), so they use
only the standard library and this module's constants. This module does not evaluate
assertions (`judge`) nor decide what is reported (`harness`).
"""

from __future__ import annotations

import operator
from typing import Any

_MAX_ITEMS = 100_000


class _NotPlain(Exception):
    """A value that is not plain data, so it cannot be reported for comparison."""


_PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, list, tuple, set, frozenset)
_PLAIN_TYPES += (dict,)


def _encode(value: Any, budget: list[int]) -> Any:
    """`value` as tagged JSON data; refuses anything but plain data of exact types.

    Only the value's type is looked at (`type(value) is ...`) before builtin methods of
    that exact type read it, so no method of a program's class can run.
    """
    budget[0] -= 1
    kind = type(value)
    if budget[0] < 0:
        raise _NotPlain("a value too large to report")
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return {"i": int.__repr__(value)}
    if kind is float:
        return {"f": float.__repr__(value)}
    if kind is complex:
        return {"c": [float.__repr__(value.real), float.__repr__(value.imag)]}
    if kind is bytes:
        return {"b": bytes.hex(value)}
    if kind is list:
        return [_encode(item, budget) for item in value]
    if kind is tuple or kind is set or kind is frozenset:
        tag = {tuple: "t", set: "s", frozenset: "fs"}[kind]
        return {tag: [_encode(item, budget) for item in value]}
    if kind is dict:
        return {"d": [[_encode(k, budget), _encode(v, budget)] for k, v in dict.items(value)]}
    for index, plain in enumerate(_PLAIN_TYPES):
        if kind is type and value is plain:
            return {"T": index}
    raise _NotPlain(f"a {type.__repr__(kind)}, not plain data")


def _decode(data: Any) -> Any:
    """The plain value `_encode` wrote (raises on anything else)."""
    if data is None or type(data) is bool or type(data) is str:
        return data
    if type(data) is list:
        return [_decode(item) for item in data]
    ((tag, inner),) = dict.items(data)
    if tag == "i":
        return int(inner)
    if tag == "f":
        return float(inner)
    if tag == "c":
        return complex(float(inner[0]), float(inner[1]))
    if tag == "b":
        return bytes.fromhex(inner)
    if tag == "T":
        return _PLAIN_TYPES[inner]
    if tag == "d":
        return {_decode(k): _decode(v) for k, v in inner}
    return {"t": tuple, "s": set, "fs": frozenset}[tag](_decode(item) for item in inner)


def _compare(op: str, left: Any, right: Any) -> Any:
    """One comparison of two plain values."""
    if op == "in":
        return left in right
    if op == "not in":
        return left not in right
    if op == "is":
        return left is right
    if op == "is not":
        return left is not right
    ops = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le}
    ops.update({">": operator.gt, ">=": operator.ge})
    return ops[op](left, right)
