"""The entry points: run a program, run tests against a solution, score completions.

`run_python`, `run_tests`, `code_tests` (the verifier `judges.sandbox:code_tests`),
`extract_code` and `ensure_sandbox`. `_execute` ties one run together: the launcher
(`bwrap`), a fresh secret, the run (`launch`), the records read back capped, and the
verdict (`judge`). The sandbox, the harness and the grading rules live in those modules,
not here.
"""

from __future__ import annotations

import re
import secrets
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from judges.sandbox.base import Isolation, Limits, SandboxResult
from judges.sandbox.bwrap import _launcher
from judges.sandbox.judge import _judge, _reason, _records
from judges.sandbox.launch import _spawn
from judges.sandbox.rewrite import _prepare_tests, _Suite


def _new_secret() -> str:
    return secrets.token_hex(32)


def _read_capped(path: Path, cap: int) -> str:
    with path.open("rb") as fh:
        return fh.read(cap).decode("utf-8", errors="replace")


def _execute(
    job: dict[str, Any], suite: _Suite | None, limits: Limits, isolation: Isolation
) -> SandboxResult:
    launcher = _launcher(isolation)
    secret = _new_secret()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tutord-sandbox-") as tmp:
        folder = Path(tmp)
        ended = _spawn(launcher, limits, folder, {**job, "secret": secret})
        seconds = time.monotonic() - started
        text = _read_capped(folder / "records", limits.output_bytes)
        stdout = _read_capped(folder / "stdout", limits.output_bytes)
        stderr = _read_capped(folder / "stderr", limits.output_bytes)
    body, status, why = _records(text, secret)
    code = status if body is not None else ended.returncode
    passed, checks, failed_check = body is not None and status == 0, 0, ""
    if suite is not None and body is not None:
        held, checks, failed_check = _judge(body, suite)
        passed, why = passed and held, "the tests did not all run"
    if passed:
        reason = "passed"
    else:
        reason = failed_check or _reason(code, stderr, limits, why or f"exit status {code}")
    if ended.timed_out:
        passed, reason = False, f"timed out after {limits.wall_seconds:g} s"
    return SandboxResult(
        passed, code, ended.timed_out, stdout, stderr, seconds, reason, checks, bool(launcher.bwrap)
    )


def ensure_sandbox(isolation: Isolation | None = None) -> bool:
    """True when untrusted code will run in the OS sandbox, False when it will run without
    one (bwrap unusable, `unsafe_local` set); raises `SandboxUnavailable` otherwise."""
    return _launcher(isolation or Isolation()).bwrap is not None


def run_python(
    source: str, limits: Limits | None = None, isolation: Isolation | None = None
) -> SandboxResult:
    """Run `source` as a Python program in the sandbox; passed = it exited with 0."""
    job = {"solution": source, "tests": None}
    return _execute(job, None, limits or Limits(), isolation or Isolation())


def run_tests(
    solution: str, tests: str, limits: Limits | None = None, isolation: Isolation | None = None
) -> SandboxResult:
    """Run `solution`, then `tests` (statements, usually asserts) in its namespace; passed
    only when every statement ran and every assertion held by the parent's check."""
    try:
        suite = _prepare_tests(tests)
    except (SyntaxError, ValueError, RecursionError) as exc:
        return SandboxResult(False, None, False, "", "", 0.0, f"the tests do not parse: {exc}")
    job = {"solution": solution, "tests": suite.statements}
    return _execute(job, suite, limits or Limits(), isolation or Isolation())


_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str:
    """The code in a completion: its fenced ```python blocks joined, else the whole text.

    >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1\\n'
    """
    blocks = _FENCE.findall(completion)
    return "\n".join(blocks) if blocks else completion


def code_tests(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    tests: Sequence[str | None] | None = None,
    limits: Limits | None = None,
    isolation: Isolation | None = None,
    **_: Any,
) -> list[float | None]:
    """Verifier: 1.0 when the completion's code passes its unit tests in the sandbox.

    `tests` holds, per row, Python statements (asserts) run after the code in its
    namespace; a row with no tests abstains. Raises `SandboxUnavailable` when there is no
    OS sandbox and `isolation` does not allow running without one.
    """
    if tests is None:
        return [None] * len(completions)
    if len(tests) != len(completions):
        raise ValueError(f"tests has {len(tests)} rows, completions have {len(completions)}")
    scores: list[float | None] = []
    for completion, test in zip(completions, tests, strict=True):
        if test is None:
            scores.append(None)
            continue
        text = completion if isinstance(completion, str) else str(completion[-1]["content"])
        scores.append(float(run_tests(extract_code(text), test, limits, isolation).passed))
    return scores
