"""Run a training stage as a subprocess: plain `python -m`, `torchrun`, or `accelerate launch`.

`build_command(stage, config_file, launch)` gives the command line for a `LaunchConfig`
(processes, launcher kind, port); `run_stage` runs it in its own process group with a
timeout, its output going to `output_dir/launch.log`, and returns the `StageResult` the stage
wrote to `output_dir/result.json`. The caller never imports torch or training code: the
stage runs in the child processes, and only `stages.stage_io` (torch-free) is used here.

On CPUs several processes run through torchrun (gloo); `accelerate launch --cpu
--num_processes 2` started only one process on these machines (ENVIRONMENT.md), so
`accelerate` is meant for GPUs, with an accelerate config file (DDP, FSDP, DeepSpeed).
`stop_running(grace_s)` (the service on SIGTERM) asks every stage this process runs to
checkpoint and stop (SIGTERM to its process group; `stages.monitor` saves a checkpoint after
the step in progress) and kills what is left after `grace_s`; `run_stage` then raises
`LaunchInterrupted`, and a later run on the same output folder resumes from the checkpoint.
It does not schedule, retry or queue runs (the daemon does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from stages.stage_io import StageResult, read_result

log = logging.getLogger(__name__)

STAGE_MODULES: dict[str, str] = {"sft": "stages.sft", "dpo": "stages.dpo", "rl": "stages.rl"}
LAUNCH_LOG = "launch.log"
Launcher = Literal["auto", "python", "torchrun", "accelerate"]


class LaunchError(RuntimeError):
    """The stage's processes ended without writing a result."""


class LaunchTimeout(LaunchError):
    """The stage ran past its timeout and was killed."""


class LaunchInterrupted(LaunchError):
    """The stage was asked to stop (`stop_running`) and stopped without a result."""


_RUNNING: set[subprocess.Popen[bytes]] = set()
_RUNNING_LOCK = threading.Lock()
_STOPPING = threading.Event()


def stop_running(grace_s: float) -> None:
    """SIGTERM every running stage's process group (it checkpoints and stops after its step),
    then SIGKILL the groups still alive after `grace_s` seconds. Later stages refuse to start."""
    _STOPPING.set()
    with _RUNNING_LOCK:
        procs = list(_RUNNING)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@dataclass(frozen=True)
class LaunchConfig:
    """How to start a stage."""

    nproc: int = 1
    """Processes (one per GPU on GPU machines)."""
    launcher: Launcher = "auto"
    """auto: `python -m` for one process, torchrun for several; or python, torchrun,
    accelerate (`accelerate launch`, for GPUs)."""
    master_port: int | None = None
    """Rendezvous port of torchrun/accelerate; a free one is picked when None."""
    accelerate_config: str | None = None
    """`accelerate launch --config_file` (DDP/FSDP/DeepSpeed settings)."""
    timeout_s: float | None = None
    """Kill the stage (its whole process group) after this many seconds; None: no limit."""
    threads: int = 1
    """OMP_NUM_THREADS of every process."""
    python: str = ""
    """The interpreter; empty: this one (`sys.executable`)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for the stage."""

    def kind(self) -> str:
        if self.launcher == "auto":
            return "python" if self.nproc == 1 else "torchrun"
        return self.launcher


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_command(
    stage: str, config_file: str | Path, launch: LaunchConfig | None = None
) -> list[str]:
    """The command line that runs `stage` ("sft", "dpo", "rl") on `config_file`.

    >>> build_command("sft", "c.json", LaunchConfig(python="py"))
    ['py', '-m', 'stages.sft', '--config', 'c.json']
    >>> build_command("rl", "c.json", LaunchConfig(nproc=2, master_port=29511, python="py"))
    ... # doctest: +NORMALIZE_WHITESPACE
    ['py', '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc_per_node', '2',
     '--master_addr', '127.0.0.1', '--master_port', '29511', '-m', 'stages.rl',
     '--config', 'c.json']
    """
    launch = launch or LaunchConfig()
    if stage not in STAGE_MODULES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGE_MODULES)}")
    if launch.nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {launch.nproc}")
    module = STAGE_MODULES[stage]
    python = launch.python or sys.executable
    tail = ["-m", module, "--config", str(config_file)]
    kind = launch.kind()
    if kind == "python":
        if launch.nproc != 1:
            raise ValueError("the python launcher runs one process; use torchrun or accelerate")
        return [python, *tail]
    port = str(launch.master_port or free_port())
    if kind == "torchrun":
        return [
            python,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc_per_node",
            str(launch.nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            *tail,
        ]
    if kind == "accelerate":
        config = ["--config_file", launch.accelerate_config] if launch.accelerate_config else []
        multi = ["--multi_gpu"] if launch.nproc > 1 and not launch.accelerate_config else []
        return [
            python,
            "-m",
            "accelerate.commands.launch",
            *config,
            *multi,
            "--num_processes",
            str(launch.nproc),
            "--main_process_port",
            port,
            *tail,
        ]
    raise ValueError(f"unknown launcher {launch.launcher!r}")


def stage_env(launch: LaunchConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the stage's processes: `base` (default: ours) with the OpenMP
    thread count set, tokenizer threads off, unbuffered output, and `launch.env` on top."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "OMP_NUM_THREADS": str(launch.threads),
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(launch.env)
    return env


def output_dir_of(config_file: str | Path) -> Path:
    """The `output_dir` a stage config file names."""
    data = json.loads(Path(config_file).read_text(encoding="utf-8"))
    output_dir = data.get("output_dir") if isinstance(data, dict) else None
    if not output_dir:
        raise ValueError(f"{config_file}: no output_dir")
    return Path(output_dir)


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the stage's process group, then SIGKILL what is left after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_stage(
    stage: str,
    config_file: str | Path,
    launch: LaunchConfig | None = None,
    *,
    cwd: str | Path | None = None,
) -> StageResult:
    """Run `stage` on `config_file` and return the result it wrote.

    Raises `LaunchTimeout` past `launch.timeout_s` (the process group is killed; a later run
    on the same output folder resumes from its newest checkpoint) and `LaunchError` when the
    processes ended without a result.json (the message carries the log's tail).
    """
    launch = launch or LaunchConfig()
    if _STOPPING.is_set():
        raise LaunchInterrupted(f"{stage} not started: the service is stopping")
    command = build_command(stage, config_file, launch)
    output_dir = output_dir_of(config_file)
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / LAUNCH_LOG
    log.info("running %s", " ".join(command))
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=stage_env(launch),
            cwd=str(cwd) if cwd else None,
            start_new_session=True,  # its own process group: a timeout kills every rank
        )
        with _RUNNING_LOCK:
            _RUNNING.add(proc)
        try:
            code = proc.wait(timeout=launch.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise LaunchTimeout(
                f"{stage} ran past {launch.timeout_s} s and was killed; log: {log_path}"
            ) from None
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
    result = read_result(output_dir)
    if result is None and _STOPPING.is_set():
        raise LaunchInterrupted(
            f"{stage} stopped (exit code {code}) because the service is stopping; the next "
            f"run resumes from its last checkpoint; log: {log_path}"
        )
    if result is None:
        raise LaunchError(
            f"{stage} exited with code {code} and wrote no result; {log_path} ends with:\n"
            + _tail(log_path)
        )
    if code != 0 and result.ok:
        log.warning("%s wrote a completed result but exited with code %d", stage, code)
    return result
