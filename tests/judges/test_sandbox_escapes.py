"""Escapes an untrusted program tries from inside the sandbox: each one fails and the host
is untouched (files, processes, sockets, environment, the parent process)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from judges.sandbox import Limits, run_python
from tests.judges.test_sandbox_support import FAST, processes_named, require_bwrap

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _bwrap() -> None:
    require_bwrap()


def _attempts(*attempts: tuple[str, str]) -> str:
    """A program trying each (name, statements) in turn, printing `DONE name` when the
    statements ran to the end and `FAILED name: error` when they raised."""
    lines = ["import ctypes, mmap, os, socket, subprocess, sys"]
    for name, body in attempts:
        lines += ["try:", textwrap.indent(textwrap.dedent(body).strip(), "    ")]
        lines += [f"    print('DONE {name}', flush=True)", "except Exception as exc:"]
        lines += [f"    print('FAILED {name}:', type(exc).__name__, exc, flush=True)"]
    return "\n".join(lines) + "\n"


EXEC_ATTEMPTS = [
    ("subprocess", "subprocess.run(['/usr/bin/echo', 'EXEC-RAN'])"),
    ("system", "print('status', os.system('echo EXEC-RAN'))"),
    ("execv", "os.execv('/usr/bin/echo', ['echo', 'EXEC-RAN'])"),
    ("posix_spawn", "os.posix_spawn('/usr/bin/echo', ['echo', 'EXEC-RAN'], {})"),
    (
        "fork_exec",
        """
        import _posixsubprocess
        r, w = os.pipe()
        pid = _posixsubprocess.fork_exec(
            [b'/usr/bin/echo', b'EXEC-RAN'], [b'/usr/bin/echo'], True, (w,), None, None,
            -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)
        os.close(w)
        os.waitpid(pid, 0)
        print('child said', os.read(r, 200))
        """,
    ),
    (
        "libc_execv",
        """
        libc = ctypes.CDLL(None, use_errno=True)
        argv = (ctypes.c_char_p * 3)(b'echo', b'EXEC-RAN', None)
        print('execv returned', libc.execv(b'/usr/bin/echo', argv), ctypes.get_errno())
        """,
    ),
]


@pytest.mark.parametrize(("name", "body"), EXEC_ATTEMPTS, ids=[a[0] for a in EXEC_ATTEMPTS])
def test_no_program_can_be_executed(name: str, body: str) -> None:
    result = run_python(_attempts((name, body)), FAST)
    output = result.stdout + result.stderr
    assert "EXEC-RAN" not in output
    evidence = {
        "subprocess": "Operation not permitted",
        "system": "status 32512",  # the shell could not be executed: 127
        "execv": "Operation not permitted",
        "posix_spawn": "Operation not permitted",
        "fork_exec": "child said b'OSError:1:",  # errno 1, EPERM, reported by the child
        "libc_execv": "execv returned -1 1",
    }
    assert evidence[name] in output, output


def test_writes_outside_the_folder_fail_and_the_host_is_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("safe")
    new_file, fifo = tmp_path / "escaped.txt", tmp_path / "fifo"
    attempts = [
        ("open", f"open({str(new_file)!r}, 'w').write('x')"),
        ("os_open", f"os.open({str(new_file)!r}, os.O_WRONLY | os.O_CREAT)"),
        ("append", f"open({str(victim)!r}, 'a').write('x')"),
        ("remove", f"os.remove({str(victim)!r})"),
        ("mkfifo", f"os.mkfifo({str(fifo)!r})"),
        ("mmap", f"f = open({str(victim)!r}, 'r+b')\nmmap.mmap(f.fileno(), 0)[:1] = b'X'"),
        ("usr", "open('/usr/tutord-escape', 'w').write('x')"),
        ("usr_mkfifo", "os.mkfifo('/usr/tutord-fifo')"),
        ("root", "open('../tutord-escape', 'w').write('x')"),
        ("dev", "open('/dev/shm/tutord-escape', 'w').write('x')"),
        ("mmap_interpreter", "f = open(sys.executable, 'rb')\nmmap.mmap(f.fileno(), 0)"),
        ("chmod", "os.chmod(sys.executable, 0o777)"),
    ]
    result = run_python(_attempts(*attempts), FAST)
    assert result.passed, result.stderr
    assert "DONE" not in result.stdout
    assert result.stdout.count("FAILED") == len(attempts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]
    assert victim.read_text() == "safe"
    for path in ("/usr/tutord-escape", "/usr/tutord-fifo", "/tutord-escape"):
        assert not Path(path).exists()
    assert not Path("/dev/shm/tutord-escape").exists()


@pytest.fixture
def listeners() -> Iterator[tuple[socket.socket, ...]]:
    """A TCP listener on 127.0.0.1, a Unix socket listener in a host folder, and one in the
    abstract namespace: none of them may see a connection."""
    folder = tempfile.mkdtemp(prefix="tutord-sock-")
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(os.path.join(folder, "s"))
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0tutord-test-{secrets.token_hex(4)}")
    for sock in (tcp, unix, abstract):
        sock.listen()
        sock.settimeout(0.2)
    yield tcp, unix, abstract
    for sock in (tcp, unix, abstract):
        sock.close()
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(folder, "s"))
        os.rmdir(folder)


def _connect(address: str | bytes | tuple[str, int]) -> str:
    family = "" if isinstance(address, tuple) else "socket.AF_UNIX"
    return f"s = socket.socket({family})\ns.settimeout(2)\ns.connect({address!r})"


def test_no_host_socket_or_port_is_reachable(listeners: tuple[socket.socket, ...]) -> None:
    tcp, unix, abstract = listeners
    port, path, name = tcp.getsockname()[1], unix.getsockname(), abstract.getsockname()
    targets = {
        "tcp": ("127.0.0.1", port),
        "unix": path,
        "abstract": name,
        "postgres": "/run/postgresql/.s.PGSQL.5432",
        "postgres_tcp": ("127.0.0.1", 5432),
        "internet": ("1.1.1.1", 53),
    }
    attempts = [(key, _connect(address)) for key, address in targets.items()]
    result = run_python(_attempts(*attempts), FAST)
    assert result.passed, result.stderr
    assert "DONE" not in result.stdout
    assert result.stdout.count("FAILED") == len(attempts)
    for sock in listeners:
        with pytest.raises(TimeoutError):
            sock.accept()


def test_the_parents_environment_does_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    canary = f"canary-{secrets.token_hex(8)}"
    monkeypatch.setenv("TUTORD_SANDBOX_CANARY", canary)
    source = f"""
import os
print(dict(os.environ))
for pid in ['self', '1', str(os.getppid()), '{os.getpid()}'] + os.listdir('/proc'):
    try:
        print(pid, open(f'/proc/{{pid}}/environ', 'rb').read())
    except OSError as exc:
        print(pid, 'refused', exc)
"""
    result = run_python(source, FAST)
    assert result.passed, result.stderr
    assert canary not in result.stdout + result.stderr
    assert "PATH=/usr/bin:/bin" in result.stdout  # the reads did run
    assert f"{os.getpid()} refused" in result.stdout  # the host pid is not there


HELPER = """
import os, sys
from judges.sandbox import Limits, run_python
me = os.getpid()
source = f'''
import os, signal
for target in ({me}, os.getppid(), 1, -1):
    try:
        os.kill(target, signal.SIGKILL)
        print('sent', target, flush=True)
    except OSError as exc:
        print('refused', target, exc, flush=True)
'''
result = run_python(source, Limits(wall_seconds=5))
print('HELPER ALIVE', repr(result.stdout))
"""


def test_the_program_cannot_signal_the_process_that_runs_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELPER], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "HELPER ALIVE" in done.stdout
    assert "refused" in done.stdout  # the host pid of the helper is not visible


def test_a_detached_grandchild_dies_with_the_sandbox(tmp_path: Path) -> None:
    late = tmp_path / "late.txt"
    name = f"tutord-s{secrets.token_hex(3)}"
    source = f"""
import ctypes, os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)
        time.sleep(3)
        open({str(late)!r}, 'w').write('survived')
        os._exit(0)
    os._exit(0)
time.sleep(60)
"""
    started = time.monotonic()
    result = run_python(source, Limits(wall_seconds=1.5))
    assert result.timed_out and not result.passed
    assert processes_named(name) == []
    time.sleep(max(0.0, started + 3.5 - time.monotonic()))
    assert processes_named(name) == [] and not late.exists()


def test_the_grandchild_marker_is_visible_while_it_runs(tmp_path: Path) -> None:
    """Control for the test above: the marker process is found while the sandbox lives."""
    name = f"tutord-s{secrets.token_hex(3)}"
    source = f"""
import ctypes, os, time
ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)
time.sleep(60)
"""
    probe = subprocess.Popen(
        [sys.executable, "-c", f"from judges.sandbox import *; run_python({source!r})"],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # its folder stays when it is killed
    )
    try:
        deadline = time.monotonic() + 20
        while not processes_named(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_named(name)
    finally:
        probe.kill()
        probe.wait()
    deadline = time.monotonic() + 5
    while processes_named(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_named(name) == []  # --die-with-parent: gone with the grader too
