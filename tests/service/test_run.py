"""`tutord run` as a real process: systemd notify, the spool folder, one daemon per home,
a graceful SIGTERM; and `--once` with its record of job runs."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_support import run_tutord, start_run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STARTUP_S = 180
"""How long a `tutord run` may take to start (imports and all) on a busy 2-core CI worker."""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home"
    assert run_tutord(root, "init").returncode == 0
    (root / "tutord.toml").write_text(
        "[service]\nspool_interval_s = 0.5\nlease_ttl_s = 3\nstop_timeout_s = 20\n"
    )
    return root


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield sock, path
    sock.close()


def receive(sock: socket.socket, seconds: float, until: str | None = None) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if until is not None and until in messages[-1]:
            break
    return messages


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.slow
def test_run_notifies_ingests_the_spool_and_stops_on_sigterm(
    home: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    proc = start_run(home, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    try:
        ready = receive(sock, STARTUP_S, until="READY=1")
        assert ready and "READY=1" in ready[-1], (ready, proc.output())
        spool = home / "spool"
        shutil.copy(EXAMPLES / "interactions.jsonl", spool / ".good.jsonl")
        (spool / ".good.jsonl").rename(spool / "good.jsonl")
        shutil.copy(EXAMPLES / "bad-lines.jsonl", spool / "bad.jsonl")
        (spool / "partial.jsonl.part").write_text('{"prompt": "still being written"')
        pings = receive(sock, 3)
        assert sum("WATCHDOG=1" in m for m in pings) >= 3, pings
        assert wait_for(lambda: (spool / "done" / "good.jsonl").exists(), 20), proc.output()
        failed = spool / "failed" / "bad.jsonl.errors.json"
        assert wait_for(failed.exists, 20), proc.output()
        errors = json.loads(failed.read_text())
        assert errors["rejected"] > 0 and errors["errors"][0]["line"] >= 1
        assert (spool / "partial.jsonl.part").exists()  # incomplete files are left alone
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.output()
        assert time.monotonic() - stopped < 20
        assert any("STOPPING=1" in m for m in receive(sock, 1))
    finally:
        if proc.poll() is None:
            proc.kill()
    # The spool stored exactly what `tutord ingest` stores from the same two files.
    twin = home.parent / "twin"
    assert run_tutord(twin, "init").returncode == 0
    run_tutord(
        twin, "ingest", str(EXAMPLES / "interactions.jsonl"), str(EXAMPLES / "bad-lines.jsonl")
    )
    counts = [json.loads(run_tutord(h, "status", "--json").stdout)["data"] for h in (home, twin)]
    assert counts[0].pop("interactions_by_source") == {"spool": counts[0]["interactions"]}
    counts[1].pop("interactions_by_source")
    assert counts[0]["interactions"] > 0 and counts[0] == counts[1]


@pytest.mark.slow
def test_a_second_daemon_on_one_sqlite_home_is_refused(home: Path) -> None:
    first = start_run(home)
    try:
        lock = home / "tutord.lock"
        locked = wait_for(lambda: lock.exists() and lock.read_text().strip() != "", STARTUP_S)
        assert locked, first.output()
        second = run_tutord(home, "run", timeout=120)
        assert second.returncode == 1
        assert "tutord.lock is locked by" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0, first.output()


def test_once_runs_the_due_jobs_and_records_them(home: Path) -> None:
    shutil.copy(EXAMPLES / "interactions.jsonl", home / "spool" / "a.jsonl")
    first = run_tutord(home, "run", "--once")
    assert first.returncode == 0, first.stderr
    ran = json.loads(first.stdout)
    assert set(ran) == {"spool", "cycle-check", "retention", "upkeep"}
    assert (home / "spool" / "done" / "a.jsonl").exists()
    again = json.loads(run_tutord(home, "run", "--once").stdout)
    # The spool is due again at once (0.5 s); retention and upkeep wait a day.
    assert "retention" not in again and "upkeep" not in again


@pytest.mark.slow
def test_run_serves_the_api_and_reports_itself_as_leader(home: Path) -> None:
    import httpx

    from tests.server_support import free_port

    port = free_port()
    with (home / "tutord.toml").open("a") as fh:
        fh.write(f'http_enabled = true\nhttp_port = {port}\napi_token = "s3cret"\n')
    proc = start_run(home)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _answers(f"{url}/healthz"), STARTUP_S), proc.output()
        assert httpx.get(f"{url}/v1/status").status_code == 401
        status = httpx.get(f"{url}/v1/status", headers={"Authorization": "Bearer s3cret"})
        assert status.status_code == 200
        assert status.json()["service"]["leader"] is True
        sent = httpx.post(
            f"{url}/v1/interactions",
            headers={"Authorization": "Bearer s3cret"},
            json={
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            },
        )
        assert sent.status_code == 200 and sent.json()["ingested"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.output()


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
