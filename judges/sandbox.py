"""Runs untrusted Python (a completion, and the unit tests that grade it) in an OS sandbox.

The sandbox is bubblewrap (`bwrap`, Debian package `bubblewrap`; `bwrap_arguments`):
- new user, PID, mount, network, IPC, UTS and cgroup namespaces (`--unshare-all`), no
  nested user namespaces (`--disable-userns`), no capabilities, a new session (no
  terminal injection), and `--die-with-parent`;
- a root that is an empty read-only tmpfs holding only: /usr (read-only), the /bin and
  /lib* links or folders, the interpreter's own prefix read-only when it is not under
  /usr, a fresh /proc of the new PID namespace, a minimal read-only /dev, and a private
  size-capped tmpfs at /tmp, which is the working folder (gone with the sandbox). Nothing
  else of the host: no /etc, /home, /root, /run, /var or host /tmp, so no host Unix
  socket; the network namespace has only a loopback of its own, so no host TCP port;
- the environment cleared (`--clearenv`, then PATH, HOME and LANG only);
- uid/gid 65534 inside. When tutord runs as root, bwrap itself is started as the host's
  `nobody`, so the sandbox's processes are not root on the host either and the process
  limit holds (root is exempt from it). A user that is not root keeps its own uid.

The interpreter is the one running tutord (`sys.executable` resolved, its prefix bound
read-only) when the sandbox's host user can execute it, else the system's
/usr/bin/python3 (as root with a Python under /root, as here). Either way it runs with
`-I -S`: the standard library only, no site-packages: graded code may use nothing else.

Inside runs a harness of two processes (`_supervise`, `_work`: their source is sent with
`-c`). The supervisor sets the resource limits (address space, CPU seconds, file size,
open files, processes, no core files), makes itself undumpable (so the worker can neither
ptrace it nor read its memory or file descriptors) and forks the worker *before* reading
the job from stdin; the job carries a fresh random secret per run, which the worker,
running the untrusted code, therefore never has. The worker installs a seccomp filter
(execve, execveat, ptrace, process_vm_*, bpf, perf_event_open, userfaultfd, keyrings,
io_uring, mount, unshare and setns fail with EPERM; machines other than x86-64 and
aarch64 are refused), runs the program, then each test statement, writing result records
to a file descriptor; when it has exited, the supervisor appends the completion record
with the secret. At the wall-clock limit the sandbox's PID 1 is killed, which kills every
process in its namespace (a `setsid` grandchild included); the call returns once they
are gone.

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

import ast
import builtins
import contextlib
import ctypes
import functools
import hmac
import inspect
import json
import logging
import marshal
import math
import operator
import os
import pwd
import re
import resource
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install bubblewrap"
SANDBOX_ID = 65534
"""uid and gid inside the sandbox (`nobody`)."""

_MAX_ITEMS = 100_000
_MAX_REPEAT = 1_000_000
_DENIED_SYSCALLS = (  # (name, x86-64 number, aarch64 number): failing with EPERM
    ("execve", 59, 221),
    ("execveat", 322, 281),
    ("ptrace", 101, 117),
    ("process_vm_readv", 310, 270),
    ("process_vm_writev", 311, 271),
    ("bpf", 321, 280),
    ("perf_event_open", 298, 241),
    ("userfaultfd", 323, 282),
    ("keyctl", 250, 219),
    ("add_key", 248, 217),
    ("request_key", 249, 218),
    ("io_uring_setup", 425, 425),
    ("io_uring_enter", 426, 426),
    ("io_uring_register", 427, 427),
    ("unshare", 272, 97),
    ("setns", 308, 268),
    ("mount", 165, 40),
    ("umount2", 166, 39),
    ("pivot_root", 155, 41),
    ("chroot", 161, 51),
    ("kexec_load", 246, 104),
    ("kexec_file_load", 320, 294),
)
_SECCOMP_DENY = {  # machine: (AUDIT_ARCH_*, denied syscall numbers)
    "x86_64": (0xC000003E, tuple(row[1] for row in _DENIED_SYSCALLS)),
    "aarch64": (0xC00000B7, tuple(row[2] for row in _DENIED_SYSCALLS)),
}


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces, and unsafe_local was not set."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run (per process, except processes and disk)."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 512
    output_bytes: int = 64 * 1024
    """Largest stdout, stderr, result record file, and any file the program writes."""
    max_processes: int = 8
    """Processes in the sandbox, counting its init, the supervisor and the worker."""
    open_files: int = 64
    disk_mb: int = 32
    """Size of the sandbox's /tmp (its working folder), held in memory."""


@dataclass(frozen=True)
class Isolation:
    """How untrusted code is isolated from the host."""

    bwrap: str = "bwrap"
    """The bubblewrap executable: a name looked up on PATH, or a path."""
    unsafe_local: bool = False
    """UNSAFE. When bwrap is missing or cannot create namespaces, run the code anyway as a
    plain local subprocess (resource limits and the harness's seccomp filter only: it can
    read the host's files, write where tutord's user may, and reach the network) instead
    of raising `SandboxUnavailable`. Only for code you trust, e.g. on a laptop without
    bubblewrap."""


@dataclass(frozen=True)
class SandboxResult:
    """What happened. `passed`: for `run_python`, the program exited with 0 within every
    limit; for `run_tests`, every test ran and held (see the module docstring)."""

    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float
    reason: str
    checks: int = 0
    """Assertions whose result the parent verified."""
    sandboxed: bool = True
    """False when it ran without bubblewrap (`Isolation.unsafe_local`)."""


# --- The harness: these functions run inside the sandbox (their source is sent as -c) ---


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


def _prctl(*args: Any) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    values = [ctypes.c_ulong(a) if isinstance(a, int) else a for a in args]
    if libc.prctl(*values) != 0:
        raise OSError(ctypes.get_errno(), f"prctl{args[:1]} failed")


def _deny_syscalls() -> None:
    """Install a seccomp filter: the syscalls in `_SECCOMP_DENY` fail with EPERM, a foreign
    ABI (i386, x32) kills the process. Refuses (raises) on other machines."""
    arch, numbers = _SECCOMP_DENY[os.uname().machine]
    checks = [(0x15, n) for n in numbers]  # BPF_JMP | BPF_JEQ | BPF_K
    if arch == 0xC000003E:
        checks.insert(0, (0x35, 0x40000000))  # BPF_JGE: the x32 ABI
    count = len(checks)
    program = [(0x20, 0, 0, 4), (0x15, 1, 0, arch), (0x06, 0, 0, 0x80000000), (0x20, 0, 0, 0)]
    program += [(code, count - i, 0, k) for i, (code, k) in enumerate(checks)]
    program += [(0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050000 | 1)]  # allow, EPERM
    raw = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program), ctypes.addressof(buffer))
    _prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    _prctl(22, 2, ctypes.byref(fprog), 0, 0)  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


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


# --- The tests: assertions become checks the parent verifies ---

_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//"}
_ARITH[ast.Mod] = "%"
_CMP = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_CMP.update({ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"})
_SINGLETONS = (None, True, False)
_CONSTANT_NODES = (ast.Constant, ast.BinOp, ast.UnaryOp, ast.Tuple, ast.List, ast.Set)
_CONSTANT_NODES += (ast.Dict, ast.operator, ast.unaryop, ast.expr_context)


@dataclass(frozen=True)
class _Suite:
    """Test statements to run, and per assertion its plan, literal leaves and source."""

    statements: list[str]
    plans: dict[str, list[Any]]
    literals: list[dict[int, Any]]
    sources: list[str]


def _is_constant(node: ast.expr) -> bool:
    return all(isinstance(n, _CONSTANT_NODES) for n in ast.walk(node))


def _literal(node: ast.expr) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _is_singleton(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and any(node.value is s for s in _SINGLETONS)


def _identity_only(node: ast.Compare) -> bool:
    """Whether the comparison has an `is` that is not against None/True/False (so it is
    about objects, and is evaluated whole in the worker: `is` cannot be overloaded)."""
    operands = [node.left, *node.comparators]
    for i, op in enumerate(node.ops):
        if isinstance(op, ast.Is | ast.IsNot):
            pair = operands[i : i + 2]
            if not any(_is_singleton(n) for n in pair):
                return True
    return False


def _plan(node: ast.expr, leaves: list[ast.expr]) -> list[Any]:
    """The boolean, comparison and arithmetic structure of an assertion, evaluated by
    `_evaluate`; everything else (calls, names, subscripts...) is a leaf."""
    if isinstance(node, ast.BoolOp):
        kind = "and" if isinstance(node.op, ast.And) else "or"
        return [kind, [_plan(value, leaves) for value in node.values]]
    if isinstance(node, ast.UnaryOp) and not _is_constant(node):
        kind = {ast.Not: "not", ast.USub: "neg", ast.UAdd: "pos"}.get(type(node.op))
        if kind:
            return [kind, _plan(node.operand, leaves)]
    if isinstance(node, ast.BinOp) and _is_arithmetic(node):
        op = _ARITH[type(node.op)]
        return ["bin", op, _plan(node.left, leaves), _plan(node.right, leaves)]
    if isinstance(node, ast.Call) and _is_abs(node):
        return ["abs", _plan(node.args[0], leaves)]
    if isinstance(node, ast.Compare) and not _identity_only(node):
        operands = [_plan(n, leaves) for n in [node.left, *node.comparators]]
        return ["cmp", [_CMP[type(op)] for op in node.ops], operands]
    leaves.append(node)
    return ["leaf", len(leaves) - 1]


def _is_arithmetic(node: ast.BinOp) -> bool:
    """+ - * / // % on a value the program computed (`"..." % x` formatting is a leaf)."""
    if type(node.op) not in _ARITH or _is_constant(node):
        return False
    return not (isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant))


def _is_abs(node: ast.Call) -> bool:
    return (
        isinstance(node.func, ast.Name)
        and node.func.id == "abs"
        and len(node.args) == 1
        and not node.keywords
        and not isinstance(node.args[0], ast.Starred)
    )


def _thunks(nodes: Sequence[ast.expr | None]) -> ast.Tuple:
    """`(lambda: node, ...)`; None stays None (a literal the worker is not given)."""
    no_args = ast.arguments(
        posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
    )
    thunks = [ast.Constant(None) if n is None else ast.Lambda(no_args, n) for n in nodes]
    return ast.Tuple(thunks, ast.Load())


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(ast.Name(name, ast.Load()), list(args), [])


class _Rewriter(ast.NodeTransformer):
    """Rewrites `assert` into `_tutord_check` and comparisons into `_tutord_compare`."""

    def __init__(self) -> None:
        self.plans: dict[str, list[Any]] = {}
        self.literals: list[dict[int, Any]] = []
        self.sources: list[str] = []

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        leaves: list[ast.expr] = []
        cid = len(self.sources)
        self.plans[str(cid)] = _plan(node.test, leaves)
        literals = {i: _literal(leaf) for i, leaf in enumerate(leaves)}
        self.literals.append({i: value for i, (ok, value) in literals.items() if ok})
        self.sources.append(ast.unparse(node.test))
        shipped = [
            None if i in self.literals[-1] else self.visit(leaf) for i, leaf in enumerate(leaves)
        ]
        thunks = _thunks(shipped)
        return ast.copy_location(ast.Expr(_call("_tutord_check", ast.Constant(cid), thunks)), node)

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        if any(isinstance(op, ast.Is | ast.IsNot) for op in node.ops):
            return node
        ops = ast.Tuple([ast.Constant(_CMP[type(op)]) for op in node.ops], ast.Load())
        thunks = _thunks([node.left, *node.comparators])
        return ast.copy_location(_call("_tutord_compare", ops, thunks), node)


def _prepare_tests(tests: str) -> _Suite:
    """Parse and rewrite test statements (raises SyntaxError)."""
    tree = ast.parse(textwrap.dedent(tests))
    rewriter = _Rewriter()
    tree = ast.fix_missing_locations(rewriter.visit(tree))
    statements = [ast.unparse(statement) for statement in tree.body]
    return _Suite(statements, rewriter.plans, rewriter.literals, rewriter.sources)


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


# --- Launching: bubblewrap, or the explicit unsafe local mode ---


@dataclass(frozen=True)
class _Interpreter:
    path: str
    prefix: str


@dataclass(frozen=True)
class _Launcher:
    bwrap: str | None
    """None: run without an OS sandbox (unsafe_local)."""
    python: _Interpreter
    user: tuple[int, int] | None
    """Host uid and gid to start as (tutord runs as root); None: keep ours."""


def _sandbox_user() -> tuple[int, int] | None:
    """When we are root, the host user to run as: `nobody` (root ignores process limits)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return SANDBOX_ID, SANDBOX_ID
    return entry.pw_uid, entry.pw_gid


def _usable_by_anyone(path: str) -> bool:
    """Whether a user with no rights of its own can execute `path` (every folder above too)."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & 0o001:
            return False
        return all(parent.stat().st_mode & 0o001 for parent in real.parents)
    except OSError:
        return False


def _interpreter(user: tuple[int, int] | None) -> _Interpreter:
    """The Python to run: ours (its real path and prefix), else the system's."""
    ours = _Interpreter(os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix))
    if user is None or _usable_by_anyone(ours.path):
        return ours
    system = os.path.realpath("/usr/bin/python3")
    if _usable_by_anyone(system):
        return _Interpreter(system, "/usr")
    raise SandboxUnavailable(
        f"no Python the sandbox user (uid {user[0]}) can execute: {ours.path} is not "
        "reachable by others and /usr/bin/python3 is missing or not executable by others"
    )


def _root_entries() -> list[str]:
    """bwrap arguments recreating /bin, /sbin, /lib* as on the host (links or read-only)."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/", name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


def bwrap_arguments(bwrap: str, python: str, prefix: str, limits: Limits) -> list[str]:
    """The bubblewrap command line up to the program it runs (see the module docstring)."""
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent"]
    args += ["--new-session", "--cap-drop", "ALL", "--hostname", "sandbox"]
    args += ["--uid", str(SANDBOX_ID), "--gid", str(SANDBOX_ID), "--ro-bind", "/usr", "/usr"]
    args += _root_entries()
    bound = ["/usr"]
    for path in (prefix, os.path.dirname(python)):  # the interpreter, when not under /usr
        if not any(Path(path).is_relative_to(done) for done in bound):
            args += ["--ro-bind", path, path]
            bound.append(path)
    args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
    args += ["--size", str(limits.disk_mb * 1024 * 1024), "--tmpfs", "/tmp", "--remount-ro", "/"]
    args += ["--chdir", "/tmp", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin"]
    return [*args, "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8"]


def _harness_argv(python: str, limits: Limits) -> list[str]:
    memory = limits.memory_mb * 1024 * 1024
    numbers = (memory, limits.cpu_seconds, limits.output_bytes, limits.open_files)
    numbers += (limits.max_processes,)
    return [python, "-I", "-S", "-B", "-c", _harness_source(), *map(str, numbers)]


def _find_bwrap(name: str) -> str | None:
    found = shutil.which(name)
    return os.path.realpath(found) if found else None


@functools.lru_cache(maxsize=16)
def _probe(bwrap: str, python: _Interpreter, user: tuple[int, int] | None) -> str | None:
    """None when bwrap can build the sandbox here, else why not."""
    argv = bwrap_arguments(bwrap, python.path, python.prefix, Limits())
    argv += ["--", python.path, "-I", "-S", "-c", "pass"]
    try:
        done = subprocess.run(
            argv, capture_output=True, timeout=30, **_user_kwargs(user), check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{bwrap} failed to start: {exc}"
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip()[-500:]
        return f"{bwrap} cannot create the sandbox here (exit {done.returncode}): {error}"
    return None


def _user_kwargs(user: tuple[int, int] | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user[0], "group": user[1], "extra_groups": []}


_WARNED: set[str] = set()


def _launcher(isolation: Isolation) -> _Launcher:
    """How to start the harness; raises SandboxUnavailable (see `Isolation.unsafe_local`)."""
    user = _sandbox_user()
    python = _interpreter(user)
    bwrap = _find_bwrap(isolation.bwrap)
    problem = _probe(bwrap, python, user) if bwrap else f"bwrap not found ({isolation.bwrap!r})"
    if problem is None:
        return _Launcher(bwrap, python, user)
    if isolation.unsafe_local:
        if problem not in _WARNED:
            _WARNED.add(problem)
            log.warning("running untrusted code WITHOUT an OS sandbox (unsafe_local): %s", problem)
        return _Launcher(None, python, user)
    raise SandboxUnavailable(
        f"refusing to run untrusted code: {problem}. Install bubblewrap "
        f"(`{INSTALL_HINT}`), or pass Isolation(unsafe_local=True) to run it without an "
        "OS sandbox (unsafe: only for code you trust)"
    )


def _new_secret() -> str:
    return secrets.token_hex(32)


@dataclass(frozen=True)
class _Exit:
    returncode: int | None
    timed_out: bool


def _read_capped(path: Path, cap: int) -> str:
    with path.open("rb") as fh:
        return fh.read(cap).decode("utf-8", errors="replace")


def _command(launcher: _Launcher, limits: Limits, folder: Path, info: int) -> list[str]:
    """The argv to start; for the unsafe local mode, also makes its working folder."""
    harness = _harness_argv(launcher.python.path, limits)
    if launcher.bwrap is not None:
        python = launcher.python
        sandbox = bwrap_arguments(launcher.bwrap, python.path, python.prefix, limits)
        return [*sandbox, "--info-fd", str(info), "--", *harness]
    work = folder / "work"
    work.mkdir()
    if launcher.user is not None:
        folder.chmod(0o711)
        os.chown(work, *launcher.user)
    return harness


def _spawn(launcher: _Launcher, limits: Limits, folder: Path, job: dict[str, Any]) -> _Exit:
    """Run the harness on `job` (secret included), its files in `folder`; wait or kill."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    records = os.open(folder / "records", flags, 0o600)
    info = os.open(folder / "info", flags, 0o600)
    try:
        argv = _command(launcher, limits, folder, info)
        cwd = folder if launcher.bwrap else folder / "work"
        data = marshal.dumps({**job, "records_fd": records}, 4)  # any Python 3.4+ reads it
        with (folder / "stdout").open("wb") as out, (folder / "stderr").open("wb") as err:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                pass_fds=(records, info) if launcher.bwrap else (records,),
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(cwd)},
                start_new_session=True,
                **_user_kwargs(launcher.user),
            )
            try:
                proc.communicate(data, timeout=limits.wall_seconds)
                return _Exit(proc.returncode, False)
            except subprocess.TimeoutExpired:
                _kill(proc, folder / "info" if launcher.bwrap else None)
                return _Exit(proc.returncode, True)
            except BaseException:  # interrupted: leave nothing running
                _kill(proc, folder / "info" if launcher.bwrap else None)
                raise
    finally:
        os.close(records)
        os.close(info)


def _kill(proc: subprocess.Popen[bytes], info: Path | None) -> None:
    """Kill the sandbox's PID 1 (the kernel then kills every process in its namespace, and
    bwrap exits once they are gone), else, or if that is not enough, the process group."""
    pidfd = _sandbox_init(proc.pid, info) if info else None
    if pidfd is not None:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        finally:
            os.close(pidfd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
            return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _sandbox_init(bwrap_pid: int, info: Path) -> int | None:
    """A pidfd for the sandbox's PID 1, a child of bwrap (its pid from bwrap's --info-fd)."""
    try:
        pid = int(json.loads(info.read_text(encoding="utf-8"))["child-pid"])
        pidfd = os.pidfd_open(pid)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:  # the pidfd pins the process: check it is bwrap's child, not a reused pid
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        status = ""
    if f"\nPPid:\t{bwrap_pid}\n" in status:
        return pidfd
    os.close(pidfd)
    return None


# --- Verdicts ---


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


# --- Public entry points ---


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
