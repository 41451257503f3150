"""How untrusted code is started: the bubblewrap command line, the host user, the Python.

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

`_launcher` probes once per setting whether bwrap can build the sandbox here; without it,
it raises `SandboxUnavailable` unless `Isolation(unsafe_local=True)` allows running the
harness as a plain subprocess. This module runs no harness (`launch`) and sets no limits
inside the sandbox (`harness`).
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from judges.sandbox.base import INSTALL_HINT, SANDBOX_ID, Isolation, Limits, SandboxUnavailable

log = logging.getLogger(__name__)


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
