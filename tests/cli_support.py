"""Running `tutord` in tests: as a real subprocess with extra environment variables, and an
initialized home on SQLite or PostgreSQL for in-process CLI tests (the fixture `home`,
imported as `cli_home`, and `both_backends`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli import app

runner = CliRunner()


@pytest.fixture(name="home")
def cli_home(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """An initialized home; on the PostgreSQL run its database is a fresh PG schema."""
    if getattr(request, "param", "sqlite") == "postgresql":
        monkeypatch.setenv("TUTORD_DATABASE_URL", request.getfixturevalue("pg_url"))
    h = tmp_path / "home"
    result = runner.invoke(app, ["--home", str(h), "init"])
    assert result.exit_code == 0, result.output
    return h


both_backends = pytest.mark.parametrize(
    "home", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


def run_tutord(
    home: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`python -m daemon.cli --home HOME ARGS...` with `env` added to this environment (an
    empty value removes the variable); output captured as text."""
    full = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key, value in (env or {}).items():
        if value:
            full[key] = value
        else:
            full.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "--home", str(home), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class TutordProcess(subprocess.Popen[bytes]):
    """A background `tutord run` whose stdout and stderr go to a file (no pipe can fill),
    so that a failing test can show what the process said."""

    log_path: Path

    def output(self, tail: int = 4000) -> str:
        """The last `tail` characters the process wrote, for an assertion's message."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"tutord run (pid {self.pid}, exit {self.poll()}) said:\n{text[-tail:]}"


def start_run(home: Path, env: Mapping[str, str] | None = None) -> TutordProcess:
    """`tutord --home HOME run` as a background process (OMP_NUM_THREADS=1, no inherited
    WATCHDOG_PID, `env` added); its output goes to `<home>-run-N.log` beside the home."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full.pop("WATCHDOG_PID", None)
    n = len(list(home.parent.glob(f"{home.name}-run-*.log")))
    log_path = home.parent / f"{home.name}-run-{n}.log"
    with log_path.open("wb") as log:
        proc = TutordProcess(
            [sys.executable, "-m", "daemon.cli", "--home", str(home), "run"],
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc.log_path = log_path
    return proc
