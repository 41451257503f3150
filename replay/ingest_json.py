"""Decoding one line of an interaction log into a JSON value, without changing any number.

`loads_line` takes the bytes of one line (a UTF-8 byte order mark at its start is
skipped) and returns the decoded value, or raises `RecordError` saying what is wrong.
It uses orjson, which reads an integer beyond 64 bits as a rounded float; so a line that
may hold one (a run of 19 or more digits) is decoded again exactly, and every integer
outside -2**63 .. 2**64-1 becomes its exact decimal string (the stored JSON holds only
64-bit integers, which every reader of it can hold). A number too large for a 64-bit
float is refused, naming its field. This module does not validate records
(`replay.records` does) and does no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from replay.records import RecordError

BOM = b"\xef\xbb\xbf"
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_INF = float("inf")


def loads_line(raw: bytes) -> Any:
    """The JSON value of one line; raise `RecordError` when it is not UTF-8 JSON.

    >>> loads_line(b'{"n": 123456789012345678901234567890, "m": 7}')
    {'n': '123456789012345678901234567890', 'm': 7}
    """
    if raw.startswith(BOM):
        raw = raw[len(BOM) :]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"not UTF-8 (byte {exc.start}: {exc.reason})") from None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        message = f"not JSON: {exc.msg} at column {exc.colno}"
        if "infinity" not in exc.msg:
            raise RecordError(message) from None
        # A number beyond a float's range: an integer (kept) or a float (refused).
        return _exact(text, message)
    if _LONG_DIGITS.search(text):
        value = _exact(text, "not JSON")  # orjson accepted it: so will json
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _exact(text: str, message: str) -> Any:
    """Decode `text` with exact integers; replace each integer a 64-bit JSON reader cannot
    hold by its decimal string; refuse a float beyond range, naming its field. `message`
    is the error when the standard library cannot decode `text` either."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise RecordError("not JSON: nested too deeply") from None
    except ValueError as exc:
        if "digits" in str(exc):  # Python's limit on decimal integer conversion
            raise RecordError("not JSON: an integer has more than 4300 digits") from None
        raise RecordError(message) from None
    root = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        parent, key = stack.pop()
        item = parent[key]
        if type(item) is int:
            if not INT_MIN <= item <= INT_MAX:
                parent[key] = str(item)
        elif type(item) is float:
            if item in (_INF, -_INF):
                raise RecordError("the number is too large for a 64-bit float", _path_of_inf(value))
        elif isinstance(item, dict):
            stack.extend((item, k) for k in item)
        elif isinstance(item, list):
            stack.extend((item, i) for i in range(len(item)))
    return root[0]


def _path_of_inf(value: Any) -> str | None:
    """The field path (`a.b[2]`) of the first infinite float in `value`."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if type(node) is float and node in (_INF, -_INF):
            return path or None
        if isinstance(node, dict):
            stack.extend((f"{path}.{k}" if path else k, v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(node))
    return None
