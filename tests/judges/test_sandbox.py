"""The code sandbox: programs run, limits hold, and without bubblewrap it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from judges import sandbox
from judges.sandbox import (
    INSTALL_HINT,
    Isolation,
    Limits,
    SandboxUnavailable,
    code_tests,
    extract_code,
    run_python,
    run_tests,
)
from tests.judges.test_sandbox_support import FAST, require_bwrap

MISSING = Isolation(bwrap="/nonexistent/bin/bwrap")


@pytest.fixture
def bwrap() -> None:
    require_bwrap()


@pytest.mark.usefixtures("bwrap")
def test_a_correct_program_passes_and_its_output_is_kept() -> None:
    result = run_python("print(6 * 7)", FAST)
    assert result.passed and result.returncode == 0 and result.stdout == "42\n"
    assert result.sandboxed


@pytest.mark.usefixtures("bwrap")
def test_a_failing_assert_fails_with_the_reason() -> None:
    result = run_python("assert 1 == 2, 'nope'", FAST)
    assert not result.passed and "AssertionError: nope" in result.reason


@pytest.mark.usefixtures("bwrap")
def test_infinite_loop_is_killed() -> None:
    result = run_python("while True:\n    pass", FAST)
    assert not result.passed and ("CPU limit" in result.reason or result.timed_out)
    assert result.seconds < FAST.wall_seconds + 3


@pytest.mark.usefixtures("bwrap")
def test_sleeping_forever_hits_the_wall_clock() -> None:
    result = run_python("import time\ntime.sleep(60)", Limits(wall_seconds=1))
    assert not result.passed and result.timed_out and "timed out" in result.reason
    assert result.seconds < 4


@pytest.mark.usefixtures("bwrap")
@pytest.mark.parametrize(
    "source", ["x = bytearray(10**10)", "l = []\nwhile True:\n    l.append(bytearray(10**7))"]
)
def test_huge_allocation_fails(source: str) -> None:
    result = run_python(source, FAST)
    assert not result.passed and "memory" in result.reason


@pytest.mark.usefixtures("bwrap")
def test_a_fork_bomb_stops_at_the_process_limit() -> None:
    source = (
        "import os, time\nn = 0\ntry:\n    while n < 50:\n        if os.fork() == 0:\n"
        "            time.sleep(2)\n            os._exit(0)\n        n += 1\n"
        "except OSError as exc:\n    print('stopped', n, exc.errno)\n"
    )
    result = run_python(source, FAST)
    assert result.passed, result.stderr
    # the sandbox's init, the supervisor and the worker count against the 8 processes
    assert result.stdout.split()[:2] == ["stopped", "5"]


@pytest.mark.usefixtures("bwrap")
def test_writing_inside_the_folder_works() -> None:
    result = run_python("open('f.txt', 'w').write('hi')\nprint(open('f.txt').read())", FAST)
    assert result.passed and result.stdout == "hi\n"


@pytest.mark.usefixtures("bwrap")
def test_the_working_folder_is_capped() -> None:
    source = "for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * 60000)"
    result = run_python(source, Limits(disk_mb=1))
    assert not result.passed and "No space left on device" in result.stderr


@pytest.mark.usefixtures("bwrap")
def test_output_is_capped() -> None:
    result = run_python("print('x' * 10**7)", Limits(output_bytes=1000))
    assert not result.passed and len(result.stdout) <= 1000


@pytest.mark.usefixtures("bwrap")
def test_the_child_is_unprivileged_alone_and_has_no_network() -> None:
    source = (
        "import os\nprint(os.getuid(), os.getpid())\nprint(sorted(os.listdir('/')))\n"
        "print(open('/proc/net/dev').read())"
    )
    result = run_python(source, FAST)
    assert result.passed, result.stderr
    ids, root, *net = result.stdout.splitlines()
    uid, pid = map(int, ids.split())
    assert uid == sandbox.SANDBOX_ID and pid < 10  # its own PID namespace
    assert "etc" not in root and "home" not in root and "run" not in root
    interfaces = [line.split(":")[0].strip() for line in net[2:] if ":" in line]
    assert interfaces == ["lo"]


@pytest.mark.usefixtures("bwrap")
def test_code_tests_verifier() -> None:
    completions = [
        "Sure:\n```python\ndef add(a, b):\n    return a + b\n```",
        "```python\ndef add(a, b):\n    return a - b\n```",
        "def add(a, b):\n    while True:\n        pass",
        "no code",
    ]
    tests = ["assert add(2, 3) == 5"] * 3 + [None]
    scores = code_tests(["p"] * 4, completions, tests=tests, limits=FAST)
    assert scores == [1.0, 0.0, 0.0, None]
    assert extract_code(completions[0]) == "def add(a, b):\n    return a + b\n"


def test_code_tests_checks_its_columns() -> None:
    assert code_tests(["p"], ["x"]) == [None]
    with pytest.raises(ValueError, match="tests has 2 rows"):
        code_tests(["p"], ["x"], tests=["assert True", "assert True"])


def test_without_bwrap_graders_refuse_with_the_fix() -> None:
    with pytest.raises(SandboxUnavailable, match=INSTALL_HINT) as error:
        code_tests(["p"], ["def f():\n    return 1"], tests=["assert f() == 1"], isolation=MISSING)
    assert "unsafe_local=True" in str(error.value) and "/nonexistent/bin/bwrap" in str(error.value)
    with pytest.raises(SandboxUnavailable):
        run_python("print(1)", FAST, MISSING)


def test_without_bwrap_the_explicit_unsafe_mode_runs(tmp_path: Path) -> None:
    unsafe = Isolation(bwrap=MISSING.bwrap, unsafe_local=True)
    assert sandbox.ensure_sandbox(unsafe) is False
    result = run_tests("def f():\n    return 1", "assert f() == 1", FAST, unsafe)
    assert result.passed and result.checks == 1 and not result.sandboxed
    completions = ["def f():\n    return 1", "def f():\n    return 2"]
    tests = ["assert f() == 1"] * 2
    scores = code_tests(["p"] * 2, completions, tests=tests, limits=FAST, isolation=unsafe)
    assert scores == [1.0, 0.0]


def test_unparseable_tests_fail_without_running() -> None:
    result = run_tests("x = 1", "assert (", FAST, MISSING)  # no sandbox needed: never runs
    assert not result.passed and "do not parse" in result.reason


def test_the_bwrap_command_line() -> None:
    args = sandbox.bwrap_arguments("bwrap", "/opt/py/bin/python3", "/opt/py", Limits(disk_mb=2))
    joined = " ".join(args)
    for part in (
        "--unshare-all --unshare-user --disable-userns --die-with-parent --new-session",
        "--ro-bind /usr /usr",
        "--ro-bind /opt/py /opt/py",
        f"--size {2 * 1024 * 1024} --tmpfs /tmp --remount-ro /",
        "--clearenv",
    ):
        assert part in joined
    for host_path in ("/run", "/var", "/home", "/etc", "/root"):
        assert host_path not in args
    assert "--ro-bind /opt/py/bin" not in joined  # inside the prefix, already bound
