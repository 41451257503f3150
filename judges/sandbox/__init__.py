"""Runs untrusted Python (a completion, and the unit tests that grade it) in an OS sandbox.

This file only re-exports the public API (`run_python`, `run_tests`, `code_tests`,
`extract_code`, `ensure_sandbox`, `Limits`, `Isolation`, `SandboxResult`,
`SandboxUnavailable`, `bwrap_arguments`, `INSTALL_HINT`, `SANDBOX_ID`); each module does
one job:
- `base`: the public data types (limits, isolation, the result, the error);
- `bwrap`: how code is started: the bubblewrap command line (the sandbox is described
  there), whether bwrap works here, the host user and the interpreter;
- `launch`: one run: start the harness, give it the job, wait, kill it at the time limit;
- `harness`: the program run inside (supervisor and worker), sent as source;
- `seccomp`: the seccomp filter the worker installs;
- `rewrite`: test assertions rewritten so that the parent decides them;
- `values`: plain values passed from the worker to the parent;
- `judge`: the parent's verdict from the result records;
- `api`: the entry points, tying one run together.

Grading (`run_tests`, `code_tests`) cannot be passed without solving. Each `assert` in
the tests is rewritten: the worker evaluates its operands (all of them, each one's
exception caught and reported), serialises them as plain data (None, bool, int, float,
complex, str, bytes, builtin types, and lists, tuples, sets, dicts of them: exact types,
read without running any code of the value's class) and the *parent* evaluates the
assertion (comparisons, `and`/`or`/`not`, + - * / // %, abs) on those values. Literal
operands (`== 5`) never leave the parent, so the program cannot read the expected values
from the tests. Every other comparison in the test code compares plain copies, so a
program's `__eq__`, `__lt__` or `__contains__` never decides anything. A run passes only
when the last record is the completion record with this run's secret, the worker exited
with 0 after every test statement ran, every assertion ran at least once (one in a branch
never taken fails the run) and every one held. So `sys.exit(0)`, `os._exit(0)`, killing
the harness, an object equal to everything, or patching builtins, math or operator fail.

Not covered: kernel exploits (run tutord's workers in a VM or gVisor for that); a program
that reads the harness and writes check records itself, which must then report the
expected values, i.e. hard-code the answers, as with any grading by tests; tests that
compare objects of a class the program defines (refused: tests must compare plain
values). Without a usable bwrap, running refuses with `SandboxUnavailable` unless
`Isolation(unsafe_local=True)` was passed, which runs the same harness as a plain
subprocess (resource limits and the seccomp filter only).
"""

from __future__ import annotations

from judges.sandbox.api import code_tests, ensure_sandbox, extract_code, run_python, run_tests
from judges.sandbox.base import (
    INSTALL_HINT,
    SANDBOX_ID,
    Isolation,
    Limits,
    SandboxResult,
    SandboxUnavailable,
)
from judges.sandbox.bwrap import bwrap_arguments

__all__ = [
    "INSTALL_HINT",
    "SANDBOX_ID",
    "Isolation",
    "Limits",
    "SandboxResult",
    "SandboxUnavailable",
    "bwrap_arguments",
    "code_tests",
    "ensure_sandbox",
    "extract_code",
    "run_python",
    "run_tests",
]
