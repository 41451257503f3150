"""The parent's verdict on one run, from the result records the harness wrote.

`_records` accepts the records only when the last one is the completion record with this
run's secret. `_judge` re-evaluates every assertion (`_recheck`, `_evaluate`) from its plan
(`rewrite`) and the plain operands the worker reported (`values`): a run passes only when
every test statement ran, every assertion ran at least once (one in a branch never taken
fails the run) and every one held. `_reason` explains a failure (signals, limits, the last
line of stderr).

This module runs nothing: starting the harness is `launch`'s job, and combining the
verdict with the exit status and time-out is `api._execute`'s.
"""

from __future__ import annotations

import ast
import hmac
import operator
import signal
from collections.abc import Callable
from typing import Any

from judges.sandbox.base import Limits
from judges.sandbox.rewrite import _Suite
from judges.sandbox.values import _compare, _decode

_MAX_REPEAT = 1_000_000


def _arith(op: str, left: Any, right: Any) -> Any:
    """One arithmetic operation on plain values, refusing ones that could blow up."""
    sequences = (str, bytes, list, tuple)
    if op == "%" and isinstance(left, str | bytes):
        raise TypeError("sandbox: string formatting with a program's value is not evaluated")
    if op == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, sequences) and type(times) is int and len(seq) * times > _MAX_REPEAT:
                raise OverflowError("sandbox: repetition too large")
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    ops.update({"/": operator.truediv, "//": operator.floordiv, "%": operator.mod})
    return ops[op](left, right)


def _evaluate(plan: list[Any], leaf: Callable[[int], Any]) -> Any:
    """The value of an assertion's plan (see `_plan`), leaves fetched lazily by index."""
    kind = plan[0]
    if kind == "leaf":
        return leaf(plan[1])
    if kind in ("and", "or"):
        for part in plan[1]:
            value = _evaluate(part, leaf)
            if (not value) if kind == "and" else value:
                return value
        return value
    if kind in ("not", "neg", "pos", "abs"):
        unary = {"not": operator.not_, "neg": operator.neg, "pos": operator.pos, "abs": abs}
        return unary[kind](_evaluate(plan[1], leaf))
    if kind == "bin":
        return _arith(plan[1], _evaluate(plan[2], leaf), _evaluate(plan[3], leaf))
    if kind != "cmp":
        raise ValueError(f"unknown plan node {kind!r}")
    left = _evaluate(plan[2][0], leaf)
    for op, operand in zip(plan[1], plan[2][1:], strict=True):
        right = _evaluate(operand, leaf)
        if not _compare(op, left, right):
            return False
        left = right
    return True


def _records(text: str, secret: str) -> tuple[list[dict[str, Any]] | None, int | None, str]:
    """The worker's records and exit status, when the last record is the completion record
    with this run's secret; else (None, None, why)."""
    try:
        records = [ast.literal_eval(line) for line in text.split("\n") if line]
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None, None, "a malformed result record"
    final = records[-1] if records else None
    if not isinstance(final, dict) or final.get("k") != "final":
        return None, None, "no completion record: the harness was ended early"
    if not isinstance(final.get("secret"), str) or not hmac.compare_digest(
        final["secret"].encode(), secret.encode()
    ):
        return None, None, "a completion record without this run's secret"
    body = records[:-1]
    if not all(isinstance(r, dict) and r.get("k") != "final" for r in body):
        return None, None, "a malformed result record"
    status = final.get("status")
    return body, status if type(status) is int else None, ""


class _Raised(Exception):
    """An assertion operand that raised in the worker."""


def _recheck(record: dict[str, Any], suite: _Suite) -> str:
    """'' when a check record holds by the parent's own evaluation, else why not."""
    cid = record.get("id")
    if type(cid) is not int or not 0 <= cid < len(suite.sources):
        return "a check record for no assertion"
    literals, leaves = suite.literals[cid], record.get("leaves")
    if not isinstance(leaves, dict):
        return "a malformed check record"

    def leaf(index: int) -> Any:
        if index in literals:
            return literals[index]
        data = leaves[str(index)]
        if isinstance(data, dict) and "x" in data:
            raise _Raised(str(data["x"]))
        return _decode(data)

    source = suite.sources[cid]
    try:
        held = bool(_evaluate(suite.plans[str(cid)], leaf))
    except _Raised as exc:
        return f"assert {source}: raised {exc}"[:300]
    except (KeyError, TypeError, ValueError, ArithmeticError, RecursionError) as exc:
        return f"assert {source}: {type(exc).__name__}: {exc}"[:300]
    return "" if held else f"assert {source} failed"[:300]


def _judge(records: list[dict[str, Any]], suite: _Suite) -> tuple[bool, int, str]:
    """(passed, checks verified, why a check failed or '' when the tests did not finish).

    Passed: every check record holds, every assertion ran at least once, and the last
    record says every test statement ran."""
    end = {"k": "end", "statements": len(suite.statements)}
    finished = records[-1:] == [end]
    checks, seen = 0, set()
    for record in records[:-1] if finished else records:
        if record.get("k") == "refused":
            return False, checks, str(record.get("why"))[:300]
        why = _recheck(record, suite) if record.get("k") == "check" else "an unknown record"
        if why:
            return False, checks, why
        checks += 1
        seen.add(record["id"])
    if not finished:
        return False, checks, ""
    missing = [cid for cid in range(len(suite.sources)) if cid not in seen]
    if missing:
        return False, checks, f"assert {suite.sources[missing[0]]}: never ran"[:300]
    return True, checks, "passed"


def _signal_reason(code: int | None, limits: Limits) -> str:
    if code == -signal.SIGXCPU or code == -signal.SIGKILL:
        return f"killed (CPU limit {limits.cpu_seconds} s or memory)"
    if code == -signal.SIGXFSZ:
        return f"output or file size over {limits.output_bytes} bytes"
    return ""


def _reason(code: int | None, stderr: str, limits: Limits, fallback: str) -> str:
    if _signal_reason(code, limits):
        return _signal_reason(code, limits)
    if "MemoryError" in stderr:
        return f"memory limit ({limits.memory_mb} MB)"
    if "File too large" in stderr:
        return f"output or file size over {limits.output_bytes} bytes"
    lines = stderr.strip().splitlines()
    return lines[-1][:300] if lines and code != 0 else fallback
