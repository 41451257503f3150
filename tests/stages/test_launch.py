"""The stage launcher: command lines for python / torchrun / accelerate, a single-process and a
two-process (torchrun, gloo on CPU) SFT run whose results have the same shape, timeouts, and
a run that dies without a result."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from stages import launch, registry
from stages.launch import LaunchConfig, LaunchError, LaunchTimeout, build_command, run_stage
from stages.stage_io import write_config
from tests.stages.test_stage_support import (
    check_published,
    check_result_file,
    folder_digest,
    sft_config,
)

REPO = Path(__file__).resolve().parents[2]


def sft_config_file(world: dict[str, Path], out: Path, **kw: object) -> Path:
    return write_config(sft_config(world, out, **kw), out / "sft.json")


def test_command_lines() -> None:
    assert build_command("dpo", "c.json") == [
        sys.executable,
        "-m",
        "stages.dpo",
        "--config",
        "c.json",
    ]
    torchrun = build_command("sft", "c.json", LaunchConfig(nproc=2, master_port=29533))
    assert torchrun[1:3] == ["-m", "torch.distributed.run"]
    assert torchrun[torchrun.index("--nproc_per_node") + 1] == "2"
    assert torchrun[torchrun.index("--master_port") + 1] == "29533"
    assert torchrun[-4:] == ["-m", "stages.sft", "--config", "c.json"]
    accel = build_command(
        "rl", "c.json", LaunchConfig(nproc=4, launcher="accelerate", accelerate_config="a.yaml")
    )
    assert accel[1:3] == ["-m", "accelerate.commands.launch"]
    assert accel[accel.index("--config_file") + 1] == "a.yaml"
    assert accel[accel.index("--num_processes") + 1] == "4"
    assert accel[-4:] == ["-m", "stages.rl", "--config", "c.json"]
    assert "--multi_gpu" in build_command("rl", "c", LaunchConfig(nproc=2, launcher="accelerate"))
    for bad in (("xx", LaunchConfig()), ("sft", LaunchConfig(nproc=0))):
        with pytest.raises(ValueError):
            build_command(bad[0], "c.json", bad[1])
    with pytest.raises(ValueError, match="one process"):
        build_command("sft", "c.json", LaunchConfig(nproc=2, launcher="python"))
    env = launch.stage_env(LaunchConfig(threads=1, env={"X": "1"}), base={"PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == "1" and env["X"] == "1" and env["PATH"] == "/bin"


def _shape(data: dict[str, object]) -> dict[str, str]:
    return {k: type(v).__name__ for k, v in data.items()}


@pytest.mark.slow
def test_single_and_two_process_sft_runs_give_results_of_the_same_shape(
    world: dict[str, Path], tmp_path: Path
) -> None:
    before = folder_digest(world["base"])
    one = run_stage("sft", sft_config_file(world, tmp_path / "one"), LaunchConfig(timeout_s=300))
    two = run_stage(
        "sft",
        sft_config_file(world, tmp_path / "two"),
        LaunchConfig(nproc=2, timeout_s=300),
        cwd=REPO,
    )
    for result, processes in ((one, 1), (two, 2)):
        assert result.ok, result.reason
        assert result.world_size == processes
        assert result.steps == 4
        check_published(result, "sft", parent=None)
        assert registry.list_versions(Path(result.adapter_path or "").parent) == [1]
    a = check_result_file(tmp_path / "one" / "run")
    b = check_result_file(tmp_path / "two" / "run")
    assert _shape(a) == _shape(b)
    # Two ranks each see per_device_batch_size rows a step: twice the tokens.
    assert two.tokens_seen > one.tokens_seen
    log = (tmp_path / "two" / "run" / "launch.log").read_text()
    assert "rank1" in log and "rank0" in log  # both processes ran the stage
    assert folder_digest(world["base"]) == before


def test_timeout_kills_the_stage(world: dict[str, Path], tmp_path: Path) -> None:
    config_file = sft_config_file(world, tmp_path)
    started = time.monotonic()
    with pytest.raises(LaunchTimeout):
        run_stage("sft", config_file, LaunchConfig(timeout_s=1.0))
    assert time.monotonic() - started < 15
    assert not (tmp_path / "run" / "result.json").exists()


@pytest.mark.slow
def test_a_stage_that_dies_without_a_result(world: dict[str, Path], tmp_path: Path) -> None:
    config_file = tmp_path / "bad.json"
    config_file.write_text(json.dumps({"output_dir": str(tmp_path / "run"), "max_step": 3}))
    with pytest.raises(LaunchError, match="max_step"):
        run_stage("sft", config_file, LaunchConfig(timeout_s=300))
