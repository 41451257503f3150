"""The code sandbox: escapes and resource abuse fail safely; the host is untouched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from judges.sandbox import Limits, code_tests, extract_code, run_python

FAST = Limits(wall_seconds=6, cpu_seconds=2, memory_mb=256)


def test_a_correct_program_passes_and_its_output_is_kept() -> None:
    result = run_python("print(6 * 7)", FAST)
    assert result.passed and result.returncode == 0 and result.stdout == "42\n"


def test_a_failing_assert_fails_with_the_reason() -> None:
    result = run_python("assert 1 == 2, 'nope'", FAST)
    assert not result.passed and "AssertionError: nope" in result.reason


def test_infinite_loop_is_killed() -> None:
    result = run_python("while True:\n    pass", FAST)
    assert not result.passed
    assert result.seconds < FAST.wall_seconds + 3


def test_sleeping_forever_hits_the_wall_clock() -> None:
    result = run_python("import time\ntime.sleep(60)", Limits(wall_seconds=1))
    assert not result.passed and result.timed_out and "timed out" in result.reason


@pytest.mark.parametrize(
    "source", ["x = bytearray(10**10)", "l = []\nwhile True:\n    l.append(bytearray(10**7))"]
)
def test_huge_allocation_fails(source: str) -> None:
    result = run_python(source, FAST)
    assert not result.passed and "memory" in result.reason


@pytest.mark.parametrize(
    "source",
    [
        "import os\nwhile True:\n    os.fork()",
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.system('true')",
        "import ctypes\nctypes.CDLL(None).fork()",
    ],
)
def test_fork_bomb_and_process_creation_fail(source: str) -> None:
    result = run_python(source, FAST)
    assert not result.passed and "not allowed" in result.reason


def test_writing_outside_the_folder_fails_and_the_host_is_untouched(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    for source in (
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
        "open('../escaped.txt', 'w').write('x')",
    ):
        result = run_python(source, FAST)
        assert not result.passed, source
    assert not target.exists()
    victim = tmp_path / "keep.txt"
    victim.write_text("safe")
    result = run_python(f"import os\nos.remove({str(victim)!r})", FAST)
    assert not result.passed and victim.read_text() == "safe"


def test_writing_inside_the_folder_works() -> None:
    result = run_python("open('f.txt', 'w').write('hi')\nprint(open('f.txt').read())", FAST)
    assert result.passed and result.stdout == "hi\n"


def test_network_connect_fails() -> None:
    source = "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', 5432))"
    result = run_python(source, FAST)
    assert not result.passed and "not allowed" in result.reason


def test_output_is_capped() -> None:
    result = run_python("print('x' * 10**7)", Limits(output_bytes=1000))
    assert not result.passed and len(result.stdout) <= 1000


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop and network namespace need root")
def test_as_root_the_child_is_unprivileged_and_has_no_network() -> None:
    source = "import os\nprint(os.getuid())\nprint(open('/proc/net/dev').read())"
    result = run_python(source, FAST)
    assert result.passed, result.stderr
    uid, *net = result.stdout.splitlines()
    assert int(uid) != 0
    interfaces = [line.split(":")[0].strip() for line in net[2:] if ":" in line]
    assert interfaces == ["lo"]


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
