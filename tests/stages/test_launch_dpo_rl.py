"""DPO and RL (GRPO) run through the launcher (`stages.launch.run_stage`, a `python -m`
subprocess) the way a cycle runs them: tiny data, two steps, from a parent adapter; each
completes, publishes a candidate whose manifest names its stage and parent, whose weights
differ from the parent's, and leaves the base model untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages import dpo, registry, rl
from stages.launch import LaunchConfig, run_stage
from stages.stage_io import write_config
from tests.stages.test_stage_support import (
    TARGETS,
    adapter_weights,
    check_published,
    check_result_file,
    dpo_rows,
    folder_digest,
    make_base,
    make_parent,
    rl_rows,
    weights_differ,
    write_jsonl,
)

pytestmark = pytest.mark.slow

SUPPORT = "tests.stages.test_stage_support"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("launch-dpo-rl")
    base = make_base(root / "base")
    return {
        "base": base,
        "parent": make_parent(base, root / "adapters", version=1),
        "dpo": write_jsonl(root / "dpo.jsonl", dpo_rows(8)),
        "rl": write_jsonl(root / "rl.jsonl", rl_rows(8)),
    }


def common(world: dict[str, Path], out: Path, train: Path) -> dict[str, object]:
    return {
        "base_model": str(world["base"]),
        "parent_adapter": str(world["parent"]),
        "train_file": str(train),
        "output_dir": str(out / "run"),
        "adapters_dir": str(out / "adapters"),
        "version": 2,
        "max_steps": 2,
        "learning_rate": 1e-2,
        "save_steps": 2,
        "lora_r": 4,
        "lora_alpha": 8,
        "target_modules": TARGETS,
    }


def check_run(world: dict[str, Path], out: Path, stage: str, result: object) -> None:
    manifest = check_published(result, stage, parent=1)  # type: ignore[arg-type]
    assert result.steps == 2  # type: ignore[attr-defined]
    assert result.world_size == 1  # type: ignore[attr-defined]
    assert manifest.version == 2
    assert registry.list_versions(out / "adapters") == [2]
    check_result_file(out / "run")
    assert (out / "run" / "launch.log").is_file()
    child = adapter_weights(Path(result.adapter_path))  # type: ignore[attr-defined]
    assert weights_differ(child, adapter_weights(world["parent"]))


def test_dpo_through_the_launcher(world: dict[str, Path], tmp_path: Path) -> None:
    before = folder_digest(world["base"])
    config = dpo.DPOStageConfig(
        **common(world, tmp_path, world["dpo"]),  # type: ignore[arg-type]
        per_device_batch_size=4,
    )
    result = run_stage(
        "dpo", write_config(config, tmp_path / "dpo.json"), LaunchConfig(timeout_s=300)
    )
    assert result.status == "completed", result.reason
    assert result.stage == "dpo"
    check_run(world, tmp_path, "dpo", result)
    assert folder_digest(world["base"]) == before


def test_rl_through_the_launcher(world: dict[str, Path], tmp_path: Path) -> None:
    before = folder_digest(world["base"])
    config = rl.RLStageConfig(
        **common(world, tmp_path, world["rl"]),  # type: ignore[arg-type]
        per_device_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        beta=0.1,
        reward_functions=(f"{SUPPORT}:alternating",),  # every group has reward variance
    )
    result = run_stage(
        "rl", write_config(config, tmp_path / "rl.json"), LaunchConfig(timeout_s=300), cwd=REPO
    )
    assert result.status == "completed", result.reason
    assert result.stage == "rl"
    check_run(world, tmp_path, "rl", result)
    assert folder_digest(world["base"]) == before
