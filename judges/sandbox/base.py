"""The sandbox's public data types: what a run may use, how it is isolated, what it returns.

`Limits` (resource limits of one run), `Isolation` (the bwrap to use, and whether running
without it is allowed), `SandboxResult`, the `SandboxUnavailable` error, and the constants
`INSTALL_HINT` and `SANDBOX_ID`. Data only: nothing here starts, runs or judges anything.
"""

from __future__ import annotations

from dataclasses import dataclass

INSTALL_HINT = "apt-get install bubblewrap"
SANDBOX_ID = 65534
"""uid and gid inside the sandbox (`nobody`)."""


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
    limit; for `run_tests`, every test ran and held (see `judges.sandbox`)."""

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
