"""The status page in a real headless browser (Chromium): it loads with the token in the
query, shows production, the counts and the last cycle, and links the drift report."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import Engine

from daemon.home import Home
from daemon.models import Cycle
from daemon.service.api import ServiceState, make_app
from daemon.settings import Settings
from replay.db import session_scope
from replay.ingest import ingest_records
from tests.server_support import free_port

pytestmark = pytest.mark.slow

TOKEN = "page-token"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "no chromium here (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def served(sqlite_engine: Engine, tmp_path: Path) -> Iterator[str]:
    home = Home(tmp_path / "home")
    home.create()
    record = {
        "messages": [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4"},
        ]
    }
    assert not ingest_records(sqlite_engine, [record], source="api").errors
    with session_scope(sqlite_engine) as s:
        s.add(
            Cycle(state="done", seed=0, stage="sft", outcome="rejected", outcome_reason="<b>x</b>")
        )
    (home.reports / "report.html").write_text("<html><body><h1>drift</h1></body></html>")
    app = make_app(
        sqlite_engine,
        home,
        Settings(service={"api_token": TOKEN}),
        state=ServiceState(leader=True, holder="h:1:x"),
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def dom(browser: str, url: str, tmp_path: Path) -> str:
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_status_page_renders_in_a_browser(served: str, tmp_path: Path) -> None:
    browser = chromium()
    page = dom(browser, f"{served}/?token={TOKEN}", tmp_path)
    assert "production adapter: <b>base</b> (leader)" in page
    assert "interactions: 1;" in page
    assert "<td>rejected</td>" in page and "&lt;b&gt;x&lt;/b&gt;" in page  # escaped
    assert f"/v1/reports/latest?format=html&amp;token={TOKEN}" in page
    report = dom(browser, f"{served}/v1/reports/latest?format=html&token={TOKEN}", tmp_path)
    assert "<h1>drift</h1>" in report
    refused = dom(browser, f"{served}/", tmp_path)
    assert "production adapter" not in refused and "a valid bearer token is required" in refused
