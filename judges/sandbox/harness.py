"""The harness: the program run inside the sandbox, and the command line that starts it.

The harness is two processes (`_supervise`, `_work`), sent as source with `-c` by
`_harness_source` (the functions of `_SHIPPED`, from here, `values` and `seccomp`, under a
header of imports and constants). The supervisor sets the resource limits (address space,
CPU seconds, file size, open files, processes, no core files), makes itself undumpable (so
the worker can neither ptrace it nor read its memory or file descriptors) and forks the
worker *before* reading the job from stdin; the job carries a fresh random secret per run,
which the worker, running the untrusted code, therefore never has. The worker installs the
seccomp filter, runs the program, then each test statement, writing result records to a
file descriptor: `_tutord_check` reports the operands of each rewritten assertion and
`_tutord_compare` compares plain copies (see `rewrite`). When the worker has exited, the
supervisor appends the completion record with the secret.

The shipped functions run in the sandbox, never in tutord, and use the standard library
only. The harness decides nothing: the parent judges the records (`judge`). Starting and
killing it is `launch`'s job.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import marshal
import math
import operator
import os
import resource
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from judges.sandbox.base import Limits
from judges.sandbox.seccomp import _SECCOMP_DENY, _deny_syscalls, _prctl
from judges.sandbox.values import _MAX_ITEMS, _PLAIN_TYPES, _compare, _decode, _encode, _NotPlain


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _emit(fd: int, record: dict[str, Any]) -> None:
    """Append one record line (its repr: plain data, read back with `ast.literal_eval`)."""
    _write_all(fd, (repr(record) + "\n").encode())


def _set_limits(memory: int, cpu: int, fsize: int, nofile: int, nproc: int) -> None:
    """Resource limits for the supervisor and everything it starts (hard = soft)."""
    for limit, value in (
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_FSIZE, fsize),
        (resource.RLIMIT_NOFILE, nofile),
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL


def _plain_copy(value: Any, records: int, where: str) -> tuple[Any, Any]:
    """(encoded, decoded copy) of a value a test compares; refuses non-plain values, with a
    record the parent sees even when the test catches the exception."""
    try:
        encoded = _encode(value, [_MAX_ITEMS])
    except (_NotPlain, RecursionError, ValueError) as exc:
        why = f"{where}: {exc if isinstance(exc, _NotPlain) else 'not reportable'}"
        _emit(records, {"k": "refused", "why": why})
        raise TypeError(f"sandbox: tests compare plain values only; {why}") from None
    return encoded, _decode(encoded)


def _checker(records: int) -> Callable[..., None]:
    """`_tutord_check(id, thunks)`, which replaces each `assert` in the tests: evaluates
    every operand the worker has (literal operands stay with the parent: None here),
    catching exceptions per operand, and reports them. It decides nothing: the parent
    evaluates the assertion, short-circuits included."""

    def check(cid: int, thunks: tuple[Callable[[], Any] | None, ...]) -> None:
        reported: dict[str, Any] = {}
        for index, thunk in enumerate(thunks):
            if thunk is None:
                continue
            try:
                value = thunk()
            except Exception as exc:
                reported[str(index)] = {"x": type.__repr__(type(exc))}
                continue
            reported[str(index)] = _plain_copy(value, records, f"assertion {cid}")[0]
        _emit(records, {"k": "check", "id": cid, "leaves": reported})

    return check


def _comparer(records: int) -> Callable[..., Any]:
    """`_tutord_compare(ops, thunks)`, which replaces every other comparison in the tests."""

    def compare(ops: tuple[str, ...], thunks: tuple[Callable[[], Any], ...]) -> Any:
        left = _plain_copy(thunks[0](), records, "a comparison")[1]
        for op, thunk in zip(ops, thunks[1:], strict=True):
            right = _plain_copy(thunk(), records, "a comparison")[1]
            if not _compare(op, left, right):
                return False
            left = right
        return True

    return compare


def _run_job(job: dict[str, Any]) -> None:
    """Run the program, then (for a test job) each test statement and the end record."""
    records = job["records_fd"]
    watched = {module: dict(vars(module)) for module in (builtins, math, operator)}
    pristine = dict(vars(builtins))
    scope: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(job["solution"], "<solution>", "exec"), scope)
    if job["tests"] is None:
        return
    scope["__builtins__"] = dict(pristine)
    scope["_tutord_check"] = _checker(records)
    scope["_tutord_compare"] = _comparer(records)
    for index, statement in enumerate(job["tests"]):
        exec(compile(statement, f"<test statement {index}>", "exec"), scope)
    replaced = [
        f"{module.__name__}.{name}"
        for module, before in watched.items()
        for name, value in before.items()
        if vars(module).get(name) is not value
    ]
    if replaced:
        raise RuntimeError(f"sandbox: the program replaced {', '.join(replaced[:5])}")
    _emit(records, {"k": "end", "statements": len(job["tests"])})


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None or type(exc.code) is int:
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def _work(job_fd: int) -> None:
    """The worker: runs the untrusted code. Forked before the secret was read."""
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)  # fd 0 again: stdin is empty
    with os.fdopen(job_fd, "rb") as pipe:
        job = marshal.loads(pipe.read())
    code = 1
    try:
        _deny_syscalls()
        _run_job(job)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:
        import traceback  # only now: a fast start matters more

        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            code = code or 1
    os._exit(code)


def _supervise() -> None:
    """The supervisor (the sandbox's first Python process): holds the secret."""
    _set_limits(*(int(arg) for arg in sys.argv[1:6]))
    _prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no ptrace, /proc/<pid>/mem or fd for others
    job_r, job_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(job_w)
        _work(job_r)
    os.close(job_r)
    job = marshal.loads(sys.stdin.buffer.read())
    secret = job.pop("secret")
    try:
        _write_all(job_w, marshal.dumps(job))
    except BrokenPipeError:
        print("sandbox: the worker ended before reading its job", file=sys.stderr)
    os.close(job_w)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    _emit(job["records_fd"], {"k": "final", "secret": secret, "status": code})
    os._exit(code if code >= 0 else 128 - code)


_SHIPPED = (
    _NotPlain,
    _encode,
    _decode,
    _compare,
    _write_all,
    _emit,
    _set_limits,
    _prctl,
    _deny_syscalls,
    _plain_copy,
    _checker,
    _comparer,
    _run_job,
    _exit_code,
    _work,
    _supervise,
)


@functools.cache
def _harness_source() -> str:
    """The harness program: imports, constants, the shipped functions, `_supervise()`."""
    modules = "builtins, ctypes, marshal, math, operator, os, resource, struct, sys"
    header = f"from __future__ import annotations\nimport {modules}\n"
    header += f"_MAX_ITEMS = {_MAX_ITEMS!r}\n_SECCOMP_DENY = {_SECCOMP_DENY!r}\n"
    names = ("type(None)" if t is type(None) else t.__name__ for t in _PLAIN_TYPES)
    header += f"_PLAIN_TYPES = ({', '.join(names)},)\n"
    body = "\n\n".join(textwrap.dedent(inspect.getsource(obj)) for obj in _SHIPPED)
    return f"{header}\n{body}\n\n_supervise()\n"


def _harness_argv(python: str, limits: Limits) -> list[str]:
    memory = limits.memory_mb * 1024 * 1024
    numbers = (memory, limits.cpu_seconds, limits.output_bytes, limits.open_files)
    numbers += (limits.max_processes,)
    return [python, "-I", "-S", "-B", "-c", _harness_source(), *map(str, numbers)]
