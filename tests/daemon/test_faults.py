"""Faults a running tutord meets, and what each leaves behind.

- A NaN in training (the weights a stage starts from hold one): the stage fails on its
  first loss, the cycle ends `failed` with that reason, nothing is published or registered,
  production does not move, and the next cycle trains a fresh version and finishes. (The
  stage's own guard is tested by `test_nan_loss_fails_the_stage_and_publishes_nothing` in
  tests/stages/test_stage_sft.py; this is what the cycle makes of it.)
- The file-size limit (a full disk, for a writer) reached part way through an adapter
  publish: no version is listed, the temporary folder is removed (or, when the limit's
  signal killed the writer, left unlisted and removed by `remove_partials`), and the same
  version publishes once the limit is lifted.
- PostgreSQL restarted while a cycle trains: a private server (initdb in a temporary
  folder, its own port and socket folder; the shared server is never touched) is stopped
  and started while the stage is paused, and the cycle finishes on fresh connections; a
  server still down when the cycle next needs it fails the cycle with a one-line database
  error, and the next `tutord cycle` resumes at `train` without training again and finishes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file
from sqlalchemy import select, text
from typer.testing import CliRunner

import daemon.cycle as cycle_module
from daemon import adapters
from daemon.cli import app
from daemon.home import Home
from daemon.models import AdapterVersion, Cycle
from replay.db import make_engine, session_scope
from stages import registry
from stages.checkpoints import latest_checkpoint
from stages.configs import StageConfig
from tests.cli_support import run_tutord
from tests.cycle_support import FAST, promote
from tests.lora_support import random_lora_adapter
from world.logs import generate_logs, write_jsonl
from world.pretrain import bootstrap

REPO = Path(__file__).resolve().parents[2]

ENV: dict[str, str] = {
    **FAST,
    "TUTORD_CURRICULUM__MIN_SFT_EXAMPLES": "3",
    "TUTORD_GATE__TOLERANCE": "",  # the default rules: a cycle may promote or reject
}


@pytest.fixture(scope="module")
def world_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world's base model, pretrained for 3 steps once per module; homes copy it."""
    return bootstrap(
        tmp_path_factory.mktemp("faults-world") / "arith-base", max_steps=3, seed=0, threads=1
    )


def cli(home: Path, *args: str) -> str:
    """`tutord --home HOME ARGS...` in this process; its output, after checking it succeeded."""
    result = CliRunner().invoke(app, ["--home", str(home), *args])
    assert result.exit_code == 0, result.output
    return result.output


def logs_file(folder: Path, seed: int) -> Path:
    path = folder / f"logs-{seed}.jsonl"
    with path.open("w") as fh:
        write_jsonl(generate_logs("add", 30, seed=seed), fh)
    return path


def tmp_folders(adapters_dir: Path) -> list[Path]:
    return sorted(adapters_dir.glob(".tmp-*"))


# ------------------------------------------------------------------------- NaN in training


def poisoned_copy(version_folder: Path, out: Path) -> Path:
    """A copy of an adapter version (no manifest: not a registry folder) with one NaN in a
    LoRA B matrix: its first forward pass, so the first training loss, is NaN."""
    shutil.copytree(version_folder, out)
    (out / registry.MANIFEST).unlink()
    weights = load_file(str(out / "adapter_model.safetensors"))
    key = next(k for k in weights if "lora_B" in k)
    weights[key][0, 0] = float("nan")
    save_file(weights, str(out / "adapter_model.safetensors"))
    return out


@pytest.mark.slow
def test_a_nan_in_training_fails_the_cycle_publishes_nothing_and_the_next_cycle_finishes(
    world_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in ENV.items():
        if value:
            monkeypatch.setenv(key, value)
        else:
            monkeypatch.delenv(key, raising=False)
    root = tmp_path / "home"
    cli(root, "init")
    shutil.copytree(world_base, root / "world" / "arith-base")
    home = Home(root)
    cli(root, "ingest", str(logs_file(tmp_path, seed=1)))

    # Production v1: a valid adapter of the settings' LoRA shape, promoted without a cycle.
    source = random_lora_adapter(world_base, tmp_path / "v1-source", seed=1, rank=16)
    manifest = registry.publish(
        source,
        home.adapters,
        version=1,
        parent=None,
        base=registry.base_identity(root / "world" / "arith-base"),
        stage="sft",
    )
    promote(root, manifest, "the test's production")
    poisoned = poisoned_copy(registry.adapter_path(home.adapters, 1), tmp_path / "poisoned")

    # The fault: the stage continues from the poisoned copy instead of production's folder.
    real_stage_config = cycle_module.stage_config

    def with_nan(ctx: cycle_module._Ctx, cycle: Cycle, version: int) -> StageConfig:
        return dataclasses.replace(
            real_stage_config(ctx, cycle, version), parent_adapter=str(poisoned)
        )

    monkeypatch.setattr(cycle_module, "stage_config", with_nan)
    engine = make_engine(home.default_database_url())
    try:
        failed = cycle_module.run_cycle(engine, home, home.settings())
        assert (failed.state, failed.outcome, failed.stage) == ("failed", "failed", "sft")
        reason = failed.outcome_reason or ""
        assert reason.startswith("training failed: ") and "non-finite loss (nan)" in reason
        assert failed.candidate == "v2"  # reserved, never published
        train = home.cycles / f"{failed.cycle_id:05d}" / "train"
        result = json.loads((train / "result.json").read_text())
        assert result["status"] == "failed" and result["adapter_path"] is None
        assert latest_checkpoint(train) is None  # the poisoned step was not saved

        assert registry.list_versions(home.adapters) == [1]
        assert not registry.adapter_path(home.adapters, 2).exists()
        assert tmp_folders(home.adapters) == []
        registry.verify(registry.adapter_path(home.adapters, 1))  # production untouched
        with session_scope(engine) as s:
            assert adapters.production(s) == 1
            assert s.execute(select(AdapterVersion.version)).scalars().all() == [1]
            row = s.get(Cycle, failed.cycle_id)
            assert row is not None and row.finished_at is not None
            assert row.train_result is not None and row.train_result["status"] == "failed"
        status = json.loads(cli(root, "status", "--json"))
        assert status["production"] == "v1" and status["cycles"][0]["state"] == "failed"

        # Not stuck: without the fault, the next cycle is a new one and trains v3 (v2 stays
        # the failed cycle's reservation), from production v1.
        monkeypatch.setattr(cycle_module, "stage_config", real_stage_config)
        cli(root, "ingest", str(logs_file(tmp_path, seed=2)))
        done = cycle_module.run_cycle(engine, home, home.settings())
        assert done.cycle_id == failed.cycle_id + 1 and not done.resumed
        assert (done.state, done.candidate) == ("done", "v3"), done
        assert done.outcome in ("promoted", "rejected"), done
        assert registry.list_versions(home.adapters) == [1, 3]
        assert registry.verify(registry.adapter_path(home.adapters, 3)).parent == 1
        with session_scope(engine) as s:
            assert adapters.production(s) == (3 if done.outcome == "promoted" else 1)
    finally:
        engine.dispose()


# ------------------------------------------------------------- file-size limit mid-publish

PUBLISH = """
import json, resource, signal, sys
from pathlib import Path
from stages import registry

args = json.loads(sys.argv[1])
if args["limit"] is not None:
    # Ignored (Python's own default), a write past the limit fails with EFBIG; with the
    # system's default, the signal kills the writer there, as a crash would.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN if args["ignore_sigxfsz"] else signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_FSIZE, (args["limit"], resource.RLIM_INFINITY))
manifest = registry.publish(
    Path(args["source"]),
    Path(args["registry"]),
    version=args["version"],
    parent=args["parent"],
    base=registry.BaseIdentity(id="test-base", config_sha256="0" * 64),
    stage="sft",
)
print(manifest.name)
"""

WEIGHTS_BYTES = 1 << 20  # float32 zeros: a 1 MiB adapter_model.safetensors


def adapter_source(folder: Path) -> Path:
    """A folder `publish` accepts: a LoRA config and a 1 MiB safetensors file."""
    folder.mkdir()
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    weights = np.zeros(WEIGHTS_BYTES // 4, dtype=np.float32)
    save_numpy({"base_model.model.q_proj.lora_A.weight": weights}, str(folder / "weights.tmp"))
    (folder / "weights.tmp").rename(folder / "adapter_model.safetensors")
    return folder


def publish_in_subprocess(
    source: Path, reg: Path, version: int, *, limit: int | None, ignore_sigxfsz: bool = True
) -> subprocess.CompletedProcess[str]:
    args = {
        "source": str(source),
        "registry": str(reg),
        "version": version,
        "parent": version - 1 if version > 1 else None,
        "limit": limit,
        "ignore_sigxfsz": ignore_sigxfsz,
    }
    return subprocess.run(
        [sys.executable, "-c", PUBLISH, json.dumps(args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("how", ["write fails", "writer killed"])
def test_the_file_size_limit_mid_publish_leaves_no_partial_version(
    tmp_path: Path, how: str
) -> None:
    source = adapter_source(tmp_path / "source")
    reg = tmp_path / "adapters"
    first = publish_in_subprocess(source, reg, 1, limit=None)
    assert first.returncode == 0, first.stderr
    v1 = registry.verify(reg / "v1")

    # Half of the weights file fits: the config is copied whole, the weights part way.
    limit = WEIGHTS_BYTES // 2
    cut = publish_in_subprocess(source, reg, 2, limit=limit, ignore_sigxfsz=how == "write fails")
    if how == "write fails":
        assert cut.returncode == 1, cut.stdout + cut.stderr
        assert "OSError: [Errno 27] File too large" in cut.stderr, cut.stderr
        assert tmp_folders(reg) == []  # publish removed its own temporary folder
    else:
        assert cut.returncode == -signal.SIGXFSZ, cut.stdout + cut.stderr
        [left] = tmp_folders(reg)  # no chance to clean up: what a crash leaves
        partial = left / "adapter_model.safetensors"
        assert partial.stat().st_size == limit  # the write really stopped part way
        assert not (left / registry.MANIFEST).exists()
        assert registry.list_versions(reg) == [1]
        assert registry.remove_partials(reg) == [left]
    assert registry.list_versions(reg) == [1]
    assert not (reg / "v2").exists()
    assert sorted(p.name for p in reg.iterdir()) == ["v1"]
    assert registry.verify(reg / "v1") == v1  # the existing version is untouched

    # The limit lifted, the same version publishes whole.
    again = publish_in_subprocess(source, reg, 2, limit=None)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "v2"
    manifest = registry.verify(reg / "v2")
    assert manifest.parent == 1
    assert (reg / "v2" / "adapter_model.safetensors").stat().st_size == (
        source / "adapter_model.safetensors"
    ).stat().st_size
    assert registry.list_versions(reg) == [1, 2] and tmp_folders(reg) == []


# --------------------------------------------------------- PostgreSQL restarted mid-cycle


def _pg_bin(name: str) -> Path | None:
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """A PostgreSQL server of the test's own: initdb into a temporary folder, started on a
    free port of 127.0.0.1 with its socket in that folder. As root (initdb refuses root) the
    server runs as the `postgres` user. Stopping it (`-m fast`) ends every connection."""

    def __init__(self, initdb: Path, pg_ctl: Path) -> None:
        self.pg_ctl = pg_ctl
        self.as_user: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="tutord-pg-"))
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "tutord"
        self._run([str(initdb), "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync"])

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            [*self.as_user, *argv], capture_output=True, text=True, timeout=60, cwd=self.root
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}")

    def running(self) -> bool:
        status = subprocess.run(
            [*self.as_user, str(self.pg_ctl), "-D", str(self.data), "status"],
            capture_output=True,
            cwd=self.root,
        )
        return status.returncode == 0

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        ctl = [str(self.pg_ctl), "-D", str(self.data), "-l", str(self.root / "log")]
        self._run([*ctl, "-w", "-t", "30", "-o", options, "start"])

    def stop(self, mode: str = "fast") -> None:
        self._run([str(self.pg_ctl), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run initdb as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and `runuser` is missing")
    server = PrivatePostgres(initdb, pg_ctl)
    try:
        server.start()
        admin = make_engine(server.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE tutord"))
        admin.dispose()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def pg_home(
    private_pg: PrivatePostgres, world_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An initialized home whose database is the private server's `tutord`."""
    home = tmp_path_factory.mktemp("faults-pg") / "home"
    init = run_tutord(home, "init", env=pg_env(private_pg))
    assert init.returncode == 0, init.stdout + init.stderr
    shutil.copytree(world_base, home / "world" / "arith-base")
    return home


def pg_env(server: PrivatePostgres, **extra: str) -> dict[str, str]:
    return {**ENV, "TUTORD_DATABASE_URL": server.url("tutord"), **extra}


def start_cycle(home: Path, env: Mapping[str, str], out: Path) -> subprocess.Popen[str]:
    """`tutord cycle` in the background, its stdout and stderr to `out`.{out,err}; `env` is
    added to this environment (an empty value removes the variable, as in `run_tutord`)."""
    full = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key, value in env.items():
        if value:
            full[key] = value
        else:
            full.pop(key, None)
    with out.with_suffix(".out").open("w") as stdout, out.with_suffix(".err").open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "--home", str(home), "cycle"],
            env=full,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )


def end(proc: subprocess.Popen[str], stage: int | None) -> None:
    """Kill what a failed test left running: the cycle and its (perhaps stopped) stage. (While
    the cycle lives, its stage's process group id cannot have been reused.)"""
    if proc.poll() is None:
        if stage is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(stage, signal.SIGKILL)
        proc.kill()
        proc.wait()


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with open(task / "children") as fh:
            found += [int(p) for p in fh.read().split()]
    return found


def pause_training(proc: subprocess.Popen[str], out: Path, train_dir: Path) -> int:
    """Wait until the cycle `start_cycle(..., out)` started has a stage that logged a training
    step, then stop (SIGSTOP) the stage's process group; returns the group's id."""
    log_file = train_dir / "logs.jsonl"
    deadline = time.monotonic() + 240
    while not (log_file.is_file() and log_file.read_text().strip()):
        if proc.poll() is not None:
            pytest.fail(f"the cycle ended before training: {out.with_suffix('.err').read_text()}")
        assert time.monotonic() < deadline, "the stage never logged a step"
        time.sleep(0.05)
    [stage] = children(proc.pid)  # the stage: its own process group (stages/launch.py)
    os.killpg(stage, signal.SIGSTOP)
    return stage


def cycle_rows(server: PrivatePostgres) -> list[tuple[int, str, str | None]]:
    engine = make_engine(server.url("tutord"))
    try:
        with session_scope(engine) as s:
            rows = s.execute(select(Cycle).order_by(Cycle.id)).scalars().all()
            return [(c.id, c.state, c.outcome) for c in rows]
    finally:
        engine.dispose()


def check_consistent(server: PrivatePostgres, home: Path) -> None:
    """Every cycle finished; the registry's folders are the registered versions; production
    is the newest promoted candidate."""
    engine = make_engine(server.url("tutord"))
    try:
        with session_scope(engine) as s:
            cycles = s.execute(select(Cycle).order_by(Cycle.id)).scalars().all()
            assert all(c.state == "done" for c in cycles), [(c.id, c.state) for c in cycles]
            registered = set(s.execute(select(AdapterVersion.version)).scalars())
            assert registered == set(registry.list_versions(home / "adapters"))
            promoted = [c.candidate_version for c in cycles if c.outcome == "promoted"]
            assert adapters.production(s) == (promoted[-1] if promoted else None)
        assert tmp_folders(home / "adapters") == []
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_restarted_while_a_cycle_trains_and_the_cycle_finishes(
    private_pg: PrivatePostgres, pg_home: Path, tmp_path: Path
) -> None:
    env = pg_env(private_pg)
    ingest = run_tutord(pg_home, "ingest", str(logs_file(tmp_path, seed=11)), env=env)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    number = len(cycle_rows(private_pg)) + 1
    proc, stage = start_cycle(pg_home, env, tmp_path / "cycle"), None
    try:
        stage = pause_training(
            proc, tmp_path / "cycle", pg_home / "cycles" / f"{number:05d}" / "train"
        )
        private_pg.stop()  # every connection the cycle's pool holds is cut
        private_pg.start()
        os.killpg(stage, signal.SIGCONT)
        assert proc.wait(300) == 0, (tmp_path / "cycle.err").read_text()
    finally:
        end(proc, stage)
    output = (tmp_path / "cycle.out").read_text()
    assert f"cycle {number} done: " in output, output
    assert cycle_rows(private_pg)[-1][:2] == (number, "done")
    check_consistent(private_pg, pg_home)


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_down_when_the_cycle_needs_it_fails_clearly_and_the_next_cycle_resumes(
    private_pg: PrivatePostgres, pg_home: Path, tmp_path: Path
) -> None:
    env = pg_env(private_pg)
    ingest = run_tutord(pg_home, "ingest", str(logs_file(tmp_path, seed=12)), env=env)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    number = len(cycle_rows(private_pg)) + 1
    train = pg_home / "cycles" / f"{number:05d}" / "train"
    proc, stage = start_cycle(pg_home, env, tmp_path / "cycle"), None
    try:
        stage = pause_training(proc, tmp_path / "cycle", train)
        private_pg.stop()
        os.killpg(stage, signal.SIGCONT)  # training ends; the cycle then needs the database
        code = proc.wait(300)
    finally:
        end(proc, stage)
        if not private_pg.running():
            private_pg.start()
    error = (tmp_path / "cycle.err").read_text()
    assert code == 2, error
    assert "error: cannot use the database: " in error and "Traceback" not in error, error
    result = json.loads((train / "result.json").read_text())
    assert result["status"] == "completed"  # the stage finished and published ...
    version = int(result["adapter_version"])
    assert version in registry.list_versions(pg_home / "adapters")
    assert cycle_rows(private_pg)[-1][:2] == (number, "train")  # ... the row did not move on

    resumed = run_tutord(pg_home, "cycle", "--json", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = json.loads(resumed.stdout)
    assert (summary["cycle_id"], summary["state"], summary["resumed"]) == (number, "done", True)
    assert summary["candidate"] == f"v{version}"
    again = json.loads((train / "result.json").read_text())
    assert again == result  # not trained again
    check_consistent(private_pg, pg_home)
