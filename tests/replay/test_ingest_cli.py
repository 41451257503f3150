"""`tutord ingest` on hostile input, on SQLite and PostgreSQL: exit 0 when every line is
stored, 3 when some are rejected (or a file is damaged part way), 2 for arguments that
are no files; never 1, never a traceback, and paths printed as they are (no markup)."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.progress import Progress

from daemon.cli import _progress_factory, app
from tests.cli_support import both_backends, cli_home, runner  # noqa: F401 (the home fixture)
from tests.replay.test_ingest import interaction


def tutord(home: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--home", str(home), *args])
    # Only typer's own exit: an exception escaping the command would be a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stdout + result.stderr
    return result.exit_code, result.stdout, result.stderr


def stored(home: Path) -> int:
    code, out, _ = tutord(home, "status", "--json")
    assert code == 0
    return int(json.loads(out)["data"]["interactions"])


def lines_file(path: Path, lines: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


@both_backends
def test_paths_with_markup_are_printed_as_they_are(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "logs[/][bold]x"  # the folder `][bold]x` in the folder `logs[`
    path = lines_file(folder / "a[red]b.jsonl", [interaction(1), "{nope"])
    code, _, err = tutord(home, "ingest", str(path))
    assert code == 3
    assert f"rejected {path}:2: not JSON" in err
    assert "rejected lines copied to" in err
    code, _, err = tutord(home, "ingest", str(folder / "[/]missing.jsonl"))
    assert code == 2 and f"{folder / '[/]missing.jsonl'}: no such file" in err


def test_the_progress_display_shows_a_markup_name_literally() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    with Progress("{task.description}", console=console, auto_refresh=False) as progress:
        advance = _progress_factory(progress)(Path("/x/a[bold]b[red].jsonl"), 100)
        advance(50)
        progress.refresh()
    assert "a[bold]b[red].jsonl" in screen.getvalue()


@both_backends
def test_what_is_not_a_file_exits_2_with_its_name(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, message in [
        (folder, "is a folder, not a file"),
        (fifo, "is a named pipe (FIFO), not a regular file"),
        (tmp_path / "missing.jsonl", "no such file"),
    ]:
        code, _, err = tutord(home, "ingest", str(path))
        assert (code, f"{path}: {message}" in err) == (2, True), err


@both_backends
def test_each_hostile_file_exits_3_and_keeps_every_good_line(home: Path, tmp_path: Path) -> None:
    good = [interaction(i) for i in range(1000)]
    times = lines_file(
        tmp_path / "times.jsonl",
        [
            good[0],
            {**interaction(5000), "timestamp": "0001-01-01T00:00:00+01:00"},
            {**interaction(5001), "timestamp": "9999-12-31T23:59:59-01:00"},
            {
                "request": {"messages": [{"role": "user", "content": "q"}]},
                "response": {
                    "created": 2**62,
                    "choices": [{"message": {"role": "assistant", "content": "a"}}],
                },
            },
            *good[1:500],
        ],
    )
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    body = "".join(json.dumps(x) + "\n" for x in good[500:]).encode()
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(compressor.compress(body) + compressor.flush(zlib.Z_FULL_FLUSH) + b"\x07")

    code, out, _ = tutord(home, "ingest", str(times), "--json")
    assert code == 3
    summary = json.loads(out)
    assert [(e["line"], e["message"].split(":")[0]) for e in summary["errors"]] == [
        (2, "timestamp"),
        (3, "timestamp"),
        (4, "response.created"),
    ]
    code, out, _ = tutord(home, "ingest", str(corrupt), "--json")
    assert code == 3
    [error] = json.loads(out)["errors"]
    assert error["line"] == 501 and "gzip data is damaged" in error["message"]
    assert stored(home) == 1000

    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(
        b"\xef\xbb\xbf"
        + b"\r".join(json.dumps(interaction(i, meta_big=2**70)).encode() for i in range(9000, 9003))
    )
    code, out, _ = tutord(home, "ingest", str(clean), "--json")
    assert code == 0 and json.loads(out)["ingested"] == 3


@both_backends
def test_a_quarantine_that_cannot_be_written_is_a_warning(home: Path, tmp_path: Path) -> None:
    quarantine = home / "quarantine"
    quarantine.rmdir()
    quarantine.write_text("someone put a file here")
    path = lines_file(
        tmp_path / "a.jsonl", [interaction(0), "{bad", *map(interaction, range(1, 1000))]
    )
    code, _, err = tutord(home, "ingest", str(path))
    assert code == 3
    assert "rejected" in err and f"{path}:2: not JSON" in err
    assert f"warning: {path}: the rejected lines could not be copied to {quarantine}" in err
    assert stored(home) == 1000


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@both_backends
def test_a_read_only_quarantine_is_a_warning(home: Path, tmp_path: Path) -> None:
    quarantine = home / "quarantine"
    quarantine.chmod(0o500)
    try:
        path = lines_file(tmp_path / "a.jsonl", [interaction(0), "{bad", interaction(1)])
        code, _, err = tutord(home, "ingest", str(path))
    finally:
        quarantine.chmod(0o700)
    assert code == 3 and "could not be copied" in err
    assert stored(home) == 2


@pytest.mark.parametrize("home", ["sqlite"], indirect=True)
def test_the_progress_bar_on_a_terminal_takes_a_markup_name(home: Path, tmp_path: Path) -> None:
    # The real command with its standard error on a terminal, so that it draws progress.
    path = lines_file(tmp_path / "run[/]x[bold].jsonl", [*map(interaction, range(20)), "{"])
    main, other = pty.openpty()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    command = [sys.executable, "-m", "daemon.cli", "--home", str(home), "ingest", str(path)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=other, env=env)
    os.close(other)
    screen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(main)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 3, screen.decode(errors="replace")
    assert "ingested 20" in out
    assert f"rejected {path}:21: not JSON".encode() in screen
    assert b"Traceback" not in screen and b"MarkupError" not in screen
