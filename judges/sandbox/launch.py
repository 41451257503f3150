"""One run of the harness: start it, give it the job, wait, and kill it at the time limit.

`_spawn` starts the harness (in bwrap, or as a plain subprocess in the unsafe local mode)
with its records, stdout and stderr going to files in a folder of the parent, writes the
job (secret included) to its stdin and waits up to the wall-clock limit. Then the
sandbox's PID 1 is killed (`_kill`), which kills every process in its namespace (a
`setsid` grandchild included); the call returns once they are gone. Without bwrap, or if
that is not enough, the process group is killed.

This module does not choose how to start (`bwrap`), what runs inside (`harness`), or
whether the run passed (`judge`).
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from judges.sandbox.base import Limits
from judges.sandbox.bwrap import _Launcher, _user_kwargs, bwrap_arguments
from judges.sandbox.harness import _harness_argv


@dataclass(frozen=True)
class _Exit:
    returncode: int | None
    timed_out: bool


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
