"""The command line: init, ingest (exit codes, --json), status, db upgrade/current."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from daemon import migrate
from daemon.cli import app
from tests.cli_support import both_backends, cli_home, runner  # noqa: F401 (the home fixture)

GOOD = {
    "messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}],
    "task": "add",
    "feedback": {"rating": 1},
}


def tutord(home: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def test_init_lays_out_the_home(tmp_path: Path) -> None:
    h = tmp_path / "h"
    code, out, _ = tutord(h, "init")
    assert code == 0
    for name in ("adapters", "cycles", "models", "reports", "spool", "quarantine"):
        assert (h / name).is_dir()
    assert (h / "tutord.toml").is_file() and (h / "tutord.db").is_file()
    assert f"revision  {migrate.head_revision()}" in out
    code, out, _ = tutord(h, "init")  # again: harmless
    assert code == 0 and "new config" not in out


@both_backends
def test_ingest_exit_codes_and_summary(home: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    code, out, _ = tutord(home, "ingest", str(good))
    assert code == 0
    assert "ingested 1" in out

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({**GOOD, "task": "sub"}) + "\n{oops\n")
    code, out, err = tutord(home, "ingest", str(mixed), "--json")
    assert code == 3
    summary = json.loads(out)
    assert summary["ingested"] == 1 and summary["rejected"] == 1
    assert summary["errors"] == [
        {"file": str(mixed), "line": 2, "message": summary["errors"][0]["message"]}
    ]
    assert summary["errors"][0]["message"].startswith("not JSON")
    assert Path(summary["quarantine_files"][0]).parent == home / "quarantine"

    code, out, _ = tutord(home, "ingest", str(good), "--json")
    assert code == 0 and json.loads(out)["duplicates"] == 1

    code, _, err = tutord(home, "ingest", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "no such file" in err


@both_backends
def test_status_counts(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl.gz"
    lines = [GOOD, {**GOOD, "task": "mul", "feedback": None}]
    lines.append({"prompt": "1+1?", "chosen": "2", "rejected": "3"})
    path.write_bytes(gzip.compress("\n".join(json.dumps(x) for x in lines).encode()))
    assert tutord(home, "ingest", str(path), "--source", "web")[0] == 0
    code, out, _ = tutord(home, "status", "--json")
    assert code == 0
    data = json.loads(out)["data"]
    assert data["interactions"] == 2
    assert data["interactions_by_task"] == {"add": 1, "mul": 1}
    assert data["interactions_by_source"] == {"web": 2}
    assert data["interactions_with_feedback"] == 1
    assert data["pairs"] == 1 and data["pairs_by_origin"] == {"ingest": 1}
    code, out, _ = tutord(home, "status")
    assert code == 0 and "interactions  2" in out


def test_uninitialized_or_bad_home_exits_2(tmp_path: Path) -> None:
    code, _, err = tutord(tmp_path / "nothing", "status")
    assert code == 2 and "tutord init" in err
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = tutord(afile, "init")
    assert code == 2 and "not a folder" in err


def test_bad_config_exits_2_naming_the_key(home: Path) -> None:
    (home / "tutord.toml").write_text("[ingest]\nbatch_size = -3\n")
    code, _, err = tutord(home, "status")
    assert code == 2 and "ingest.batch_size" in err


@pytest.mark.parametrize("table", ["train.sft", "train.dpo", "train.rl", "synth"])
def test_bad_stage_or_synth_key_exits_2_before_anything_runs(home: Path, table: str) -> None:
    (home / "tutord.toml").write_text(f"[{table}]\nbogus = 1\n")
    code, _, err = tutord(home, "cycle")
    assert code == 2 and f"key '{table}.bogus'" in err and "unknown key" in err
    assert not list((home / "cycles").iterdir())  # no cycle started
    (home / "tutord.toml").write_text(f"[{table}]\nseed = 1\n")
    code, _, err = tutord(home, "cycle")
    assert code == 2 and f"key '{table}.seed'" in err and "each run" in err


def test_home_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUTORD_HOME", str(tmp_path / "envhome"))
    result = runner.invoke(app, ["init"])
    assert result.exit_code == 0
    assert (tmp_path / "envhome" / "tutord.toml").is_file()


@both_backends
def test_db_current_and_upgrade(home: Path) -> None:
    code, out, _ = tutord(home, "db", "current")
    assert code == 0 and f"current {migrate.head_revision()}" in out and "up to date" in out
    code, out, _ = tutord(home, "db", "upgrade")
    assert code == 0 and f"{migrate.head_revision()} -> {migrate.head_revision()}" in out


def test_status_refuses_a_database_behind_its_migrations(home: Path) -> None:
    import sqlite3

    with sqlite3.connect(home / "tutord.db") as conn:
        conn.execute("DELETE FROM alembic_version")
    code, _, err = tutord(home, "status")
    assert code == 2 and "tutord db upgrade" in err
    code, out, _ = tutord(home, "db", "current")
    assert code == 0 and "behind" in out
