"""Runs untrusted Python (a completion plus its unit tests) in a constrained subprocess.

Layers, each one enough for the common failure and together for the rest:
- a fresh temporary working folder, deleted afterwards; `python -I` (isolated mode);
- resource limits (rlimits): address space, CPU seconds, file size (which also caps
  stdout/stderr, written to files), open files, and number of processes;
- when run as root: the child drops to an unprivileged user (so the process limit is
  enforced and the host's files are read-only to it) and enters a new network
  namespace with no interfaces (no network at all);
- inside the child, a Python audit hook refuses writes outside the folder, sockets,
  process creation (fork, exec, subprocess) and ctypes;
- a wall-clock timeout after which the whole process group is killed.

It is a test harness for model-written code, not a security boundary against a
determined attacker with kernel exploits; for that, run tutord's workers in a VM or
gVisor. It does not decide what a test means (see `code_tests` in this module).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000
_UNPRIVILEGED = "nobody"

# Installed in the child before the untrusted code runs. Audit hooks cannot be removed.
_GUARD = r"""
import os, sys
_ROOT = os.path.realpath(os.getcwd())
_BLOCKED = {
    "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
    "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
    "subprocess.Popen", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.kill",
    "os.killpg", "pty.spawn", "signal.pthread_kill", "sys.addaudithook",
}
_WRITE_CHECKED = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod",
                  "os.chown", "os.link", "os.symlink", "os.truncate", "shutil.rmtree",
                  "os.utime"}

def _inside(path):
    try:
        p = os.path.realpath(os.fsdecode(path)) if not isinstance(path, int) else None
    except Exception:
        return False
    return p is None or p == _ROOT or p.startswith(_ROOT + os.sep)

def _guard(event, args):
    if event in _BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and args and len(args) > 1:
        path, mode = args[0], args[1]
        writing = isinstance(mode, str) and any(m in mode for m in "wax+")
        if isinstance(mode, int):
            writing = bool(mode & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))
        if writing and not _inside(path):
            raise PermissionError(f"sandbox: writing outside the working folder: {path!r}")
    elif event in _WRITE_CHECKED and args and not all(
        _inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))
    ):
        raise PermissionError(f"sandbox: {event} outside the working folder")

sys.addaudithook(_guard)
del _guard
"""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 512
    output_bytes: int = 64 * 1024
    max_processes: int = 8
    open_files: int = 64


@dataclass(frozen=True)
class SandboxResult:
    """What happened: `passed` is True only for exit status 0 within every limit."""

    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float
    reason: str


def _unshare_network() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(CLONE_NEWNET) == 0
    except (OSError, AttributeError):
        return False


def _preexec(limits: Limits, workdir: str, uid: int | None, gid: int | None) -> Any:
    def setup() -> None:
        os.setsid()
        if uid is not None:
            _unshare_network()  # needs root; without it the audit hook still blocks sockets
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if uid is not None and gid is not None:
            os.chown(workdir, uid, gid)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))

    return setup


def _read_capped(path: Path, cap: int) -> str:
    with path.open("rb") as fh:
        return fh.read(cap).decode("utf-8", errors="replace")


def _usable_by_anyone(path: str) -> bool:
    """Whether a user with no rights of its own can execute `path` (every folder above too)."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & 0o001:
            return False
        return all(parent.stat().st_mode & 0o001 for parent in real.parents)
    except OSError:
        return False


def _interpreter_and_user() -> tuple[str, int | None, int | None]:
    """The Python to run and, when we are root, the unprivileged user to run it as.

    Root ignores the process-count limit, so the child drops to `nobody`; that user
    must be able to execute the interpreter (a Python under /root cannot be), so the
    system's /usr/bin/python3 is used then. Without either, the child stays root and
    the audit hook alone refuses fork and exec.
    """
    if os.geteuid() != 0:
        return sys.executable, None, None
    try:
        entry = pwd.getpwnam(_UNPRIVILEGED)
    except KeyError:
        return sys.executable, None, None
    for candidate in (sys.executable, "/usr/bin/python3"):
        if _usable_by_anyone(candidate):
            return candidate, entry.pw_uid, entry.pw_gid
    return sys.executable, None, None


def run_python(source: str, limits: Limits | None = None) -> SandboxResult:
    """Run `source` as a Python program in a fresh folder under `limits`."""
    limits = limits or Limits()
    python, uid, gid = _interpreter_and_user()
    with tempfile.TemporaryDirectory(prefix="tutord-sandbox-") as tmp:
        work = Path(tmp)
        (work / "main.py").write_text(_GUARD + "\n" + source, encoding="utf-8")
        out_path, err_path = work / ".stdout", work / ".stderr"
        started = time.monotonic()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            if uid is not None:
                for p in (work / "main.py", out_path, err_path):
                    os.chown(p, uid, gid)  # type: ignore[arg-type]
            proc = subprocess.Popen(
                [python, "-I", "-B", "main.py"],
                cwd=work,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"},
                preexec_fn=_preexec(limits, str(work), uid, gid),
                close_fds=True,
            )
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the child and anything it started
                proc.wait()
        seconds = time.monotonic() - started
        stdout = _read_capped(out_path, limits.output_bytes)
        stderr = _read_capped(err_path, limits.output_bytes)
    code = proc.returncode
    reason = _reason(code, timed_out, stderr, limits)
    return SandboxResult(
        code == 0 and not timed_out, code, timed_out, stdout, stderr, seconds, reason
    )


def _reason(code: int | None, timed_out: bool, stderr: str, limits: Limits) -> str:
    if timed_out:
        return f"timed out after {limits.wall_seconds:g} s"
    if code == 0:
        return "passed"
    if code == -signal.SIGXCPU or code == -signal.SIGKILL:
        return f"killed (CPU limit {limits.cpu_seconds} s or memory)"
    if code == -signal.SIGXFSZ:
        return f"output or file size over {limits.output_bytes} bytes"
    if "MemoryError" in stderr:
        return f"memory limit ({limits.memory_mb} MB)"
    last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {code}"
    return last[:300]


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
    **_: Any,
) -> list[float | None]:
    """Verifier: 1.0 when the completion's code passes its unit tests in the sandbox.

    `tests` holds, per row, Python statements (asserts) run after the code; a row with
    no tests abstains.
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
        program = extract_code(text) + "\n\n" + textwrap.dedent(test) + "\n"
        scores.append(float(run_python(program, limits).passed))
    return scores
