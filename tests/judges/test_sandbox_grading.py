"""Code grading the program cannot fool: only solving the task scores 1.0.

The first tests need no sandbox: how tests are rewritten, what values may be reported,
and how the parent judges result records. The others run solutions in bubblewrap.
"""

from __future__ import annotations

import json

import pytest

from judges.sandbox import api, code_tests, judge, rewrite, run_tests, values
from tests.judges.test_sandbox_support import FAST, require_bwrap

ADD_TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
RIGHT = "def add(a, b):\n    return a + b\n"


def _score(solution: str, tests: str = ADD_TESTS) -> float | None:
    return code_tests(["p"], [solution], tests=[tests], limits=FAST)[0]


def test_expected_literals_never_reach_the_sandbox() -> None:
    suite = rewrite._prepare_tests("assert add(2, 3) == 12345\nassert 'secret-word' in f()")
    shipped = "\n".join(suite.statements)
    assert "12345" not in shipped and "secret-word" not in shipped
    assert "add(2, 3)" in shipped and "_tutord_check(0" in shipped
    assert suite.literals == [{1: 12345}, {0: "secret-word"}]


def test_comparisons_become_parent_plans() -> None:
    suite = rewrite._prepare_tests("assert abs(area(2) - 12.566) < 0.01 and not f(1) is None")
    assert suite.plans["0"] == [
        "and",
        [
            ["cmp", ["<"], [["abs", ["bin", "-", ["leaf", 0], ["leaf", 1]]], ["leaf", 2]]],
            ["not", ["cmp", ["is"], [["leaf", 3], ["leaf", 4]]]],
        ],
    ]


TOUCHED: list[str] = []


class _Spy:
    """A value whose methods record that they ran."""

    def __eq__(self, other: object) -> bool:
        TOUCHED.append("eq")
        return True

    def __iter__(self) -> object:
        TOUCHED.append("iter")
        return iter([])

    def __repr__(self) -> str:
        TOUCHED.append("repr")
        return "5"

    __hash__ = object.__hash__


class _SpyList(list[int]):
    def __iter__(self) -> object:
        TOUCHED.append("list-iter")
        return iter([5])


@pytest.mark.parametrize("value", [_Spy(), _SpyList([1]), [1, _Spy()], {"k": _Spy()}])
def test_only_plain_values_are_reported_and_none_of_their_code_runs(value: object) -> None:
    TOUCHED.clear()
    with pytest.raises(values._NotPlain):
        values._encode(value, [1000])
    assert TOUCHED == []


def test_plain_values_round_trip_exactly() -> None:
    value = [None, True, 3, 2.5, float("inf"), 1j, "s", b"b", (1, 2), {1, 2}, frozenset()]
    value += [{"k": (1,)}, int, 10**50]
    data = json.loads(json.dumps(values._encode(value, [1000])))
    back = values._decode(data)
    assert back == value and [type(v) for v in back] == [type(v) for v in value]
    assert type(values._decode({"t": [{"i": "1"}]})) is tuple  # (1,) != [1]: tuples stay tuples


def _records(*records: dict[str, object], secret: str = "s3cret") -> str:
    final = {"k": "final", "secret": secret, "status": 0}
    return "\n".join(repr(r) for r in [*records, final]) + "\n"


def test_the_parent_needs_the_completion_record_with_this_runs_secret() -> None:
    body, status, _ = judge._records(_records({"k": "end", "statements": 1}), "s3cret")
    assert body == [{"k": "end", "statements": 1}] and status == 0
    for text in ("", _records(secret="guess"), _records()[:-5], '{"k": "end"}\n'):
        assert judge._records(text, "s3cret")[0] is None


def test_the_parent_rechecks_every_assertion_and_needs_all_of_them() -> None:
    suite = rewrite._prepare_tests(ADD_TESTS)
    end = {"k": "end", "statements": 2}

    def check(cid: int, got: int) -> dict[str, object]:
        return {"k": "check", "id": cid, "leaves": {"0": {"i": str(got)}}}

    assert judge._judge([check(0, 5), check(1, 0), end], suite) == (True, 2, "passed")
    assert judge._judge([check(0, 6), check(1, 0), end], suite)[2] == (
        "assert add(2, 3) == 5 failed"
    )
    assert "never ran" in judge._judge([check(0, 5), end], suite)[2]
    assert judge._judge([check(0, 5), check(1, 0)], suite)[:2] == (False, 2)
    raised = {"k": "check", "id": 0, "leaves": {"0": {"x": "<class 'ValueError'>"}}}
    assert "raised" in judge._judge([raised, check(1, 0), end], suite)[2]


@pytest.fixture
def bwrap() -> None:
    require_bwrap()


@pytest.mark.usefixtures("bwrap")
def test_a_correct_solution_scores_one() -> None:
    result = run_tests(RIGHT, ADD_TESTS, FAST)
    assert result.passed and result.checks == 2 and result.reason == "passed"
    assert _score(RIGHT) == 1.0


@pytest.mark.usefixtures("bwrap")
@pytest.mark.parametrize(
    "solution",
    [
        pytest.param("def add(a, b):\n    return a - b\n", id="wrong"),
        pytest.param("def add(a, b):\n    return 0\nimport sys\nsys.exit(0)\n", id="sys.exit"),
        pytest.param("import sys\ndef add(a, b):\n    sys.exit(0)\n", id="sys.exit-in-test"),
        pytest.param("import os\ndef add(a, b):\n    os._exit(0)\n", id="os._exit"),
        pytest.param("import os\nos._exit(0)\n", id="os._exit-at-import"),
        pytest.param("import os\ndef add(a, b):\n    os.kill(os.getpid(), 9)\n", id="kill-self"),
        pytest.param("import os\nos.kill(os.getppid(), 9)\n" + RIGHT, id="kill-supervisor"),
        pytest.param("import os\nos.kill(-1, 9)\n", id="kill-all"),
        pytest.param(
            "class Any:\n    def __eq__(self, other):\n        return True\n"
            "    def __ne__(self, other):\n        return False\n"
            "def add(a, b):\n    return Any()\n",
            id="always-equal",
        ),
        pytest.param(
            "class I(int):\n    def __eq__(self, other):\n        return True\n"
            "    __hash__ = int.__hash__\ndef add(a, b):\n    return I(0)\n",
            id="int-subclass",
        ),
        pytest.param(
            "def add(a, b):\n    globals()['_tutord_check'] = lambda *a: None\n    return 0\n",
            id="disables-checks",
        ),
        pytest.param(
            "import builtins\nbuiltins.abs = lambda x: 0\ndef add(a, b):\n    return 0\n",
            id="patches-builtins",
        ),
    ],
)
def test_solutions_that_do_not_solve_score_zero(solution: str) -> None:
    assert _score(solution) == 0.0


@pytest.mark.usefixtures("bwrap")
def test_tolerance_checks_and_patched_modules_cannot_be_fooled() -> None:
    tests = (
        "assert abs(area(2) - 12.566) < 0.01\n"
        "import math\nassert math.isclose(area(1), 3.1416, rel_tol=1e-3)\n"
    )
    right = "import math\ndef area(r):\n    return math.pi * r * r\n"
    zero = (
        "class Z:\n    def __sub__(self, other):\n        return 0.0\n    __rsub__ = __sub__\n"
        "    def __abs__(self):\n        return 0.0\n    def __float__(self):\n"
        "        return 3.1416\ndef area(r):\n    return Z()\n"
    )
    patched = "import math\nmath.isclose = lambda *a, **k: True\ndef area(r):\n    return 12.566\n"
    scores = [_score(s, tests) for s in (right, zero, patched)]
    assert scores == [1.0, 0.0, 0.0]


@pytest.mark.usefixtures("bwrap")
def test_humaneval_style_tests_with_helpers_loops_and_generators() -> None:
    tests = (
        "def check(candidate):\n    for x in range(3):\n        assert candidate(x) == 2 * x\n"
        "    assert all(candidate(x) == 2 * x for x in range(5))\n"
        "    r = candidate(None)\n    assert r is None or r[0] == 1\n"
        "check(double)\n"
    )
    right = "def double(x):\n    return None if x is None else 2 * x\n"
    wrong = "def double(x):\n    return None if x is None else x + 2\n"
    fooling = (
        "class Any:\n    __eq__ = lambda s, o: True\n    __hash__ = object.__hash__\n"
        "def double(x):\n    return None if x is None else Any()\n"
    )
    assert [_score(s, tests) for s in (right, wrong, fooling)] == [1.0, 0.0, 0.0]


FORGERIES = {
    "end-only": [{"k": "end", "statements": 2}],
    "own-values": [
        {"k": "check", "id": 0, "leaves": {"0": {"i": "0"}}},
        {"k": "check", "id": 1, "leaves": {"0": {"i": "0"}}},
        {"k": "end", "statements": 2},
    ],
    "guessed-secret": [{"k": "end", "statements": 2}, {"k": "final", "secret": "0", "status": 0}],
}

SNOOP = """
import gc, json, os, sys
found = []
ppid = os.getppid()
for path in (f'/proc/{ppid}/environ', f'/proc/{ppid}/mem', f'/proc/{ppid}/fd/0',
             f'/proc/{ppid}/cmdline', '/proc/self/environ'):
    try:
        found.append(open(path, 'rb').read(100000))
    except OSError as exc:
        found.append(repr(exc))
frame = sys._getframe()
while frame:
    found.append(repr(frame.f_locals)[:100000])
    frame = frame.f_back
found += [repr(o)[:1000] for o in gc.get_objects() if isinstance(o, dict)]
import re
text = ' '.join(map(str, found))
print(sorted(set(re.findall('[0-9a-f]{32,}', text)))[:50], 'records_fd' in text, flush=True)
job = sys._getframe(1).f_locals['job']
for record in FORGED:
    os.write(job['records_fd'], (repr(record) + chr(10)).encode())
os._exit(0)
"""


@pytest.mark.usefixtures("bwrap")
@pytest.mark.parametrize("forged", FORGERIES.values(), ids=FORGERIES.keys())
def test_the_secret_cannot_be_found_and_results_cannot_be_forged(
    monkeypatch: pytest.MonkeyPatch, forged: list[dict[str, object]]
) -> None:
    secret = "5ec7e7" * 10
    monkeypatch.setattr(api, "_new_secret", lambda: secret)
    solution = f"FORGED = {forged!r}\n{SNOOP}\n{RIGHT}"
    result = run_tests(solution, ADD_TESTS, FAST)
    assert secret not in result.stdout + result.stderr
    assert result.stdout.endswith(" True\n")  # it did find the job in its caller's frame
    assert result.returncode == 0 and not result.passed, result.reason
