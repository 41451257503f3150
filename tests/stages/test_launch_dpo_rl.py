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
    adapter_weights,
    check_published,
    check_result_file,
    dpo_rows,
    folder_digest,
    make_world,
    rl_rows,
    stage_config,
    weights_differ,
)

pytestmark = pytest.mark.slow

SUPPORT = "tests.stages.test_stage_support"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("launch-dpo-rl")
    return make_world(root, parent=True, dpo=dpo_rows(8), rl=rl_rows(8))


def launch_and_check(
    world: dict[str, Path], out: Path, stage: str, config_class: type, **fields: object
) -> None:
    """Run `stage` through the launcher on its rows, two steps from the parent v1 to candidate
    v2 (`fields` add to the config), and check the run: completed, published with the parent
    named, weights that differ from the parent's, and the base untouched."""
    before = folder_digest(world["base"])
    config = stage_config(
        config_class,
        world,
        out,
        train=stage,
        parent_adapter=str(world["parent"]),
        version=2,
        max_steps=2,
        **fields,
    )
    result = run_stage(
        stage, write_config(config, out / f"{stage}.json"), LaunchConfig(timeout_s=300), cwd=REPO
    )
    assert result.status == "completed", result.reason
    assert result.stage == stage
    manifest = check_published(result, stage, parent=1)
    assert result.steps == 2
    assert result.world_size == 1
    assert manifest.version == 2
    assert registry.list_versions(out / "adapters") == [2]
    check_result_file(out / "run")
    assert (out / "run" / "launch.log").is_file()
    child = adapter_weights(Path(result.adapter_path or ""))
    assert weights_differ(child, adapter_weights(world["parent"]))
    assert folder_digest(world["base"]) == before


def test_dpo_through_the_launcher(world: dict[str, Path], tmp_path: Path) -> None:
    launch_and_check(world, tmp_path, "dpo", dpo.DPOStageConfig, per_device_batch_size=4)


def test_rl_through_the_launcher(world: dict[str, Path], tmp_path: Path) -> None:
    launch_and_check(
        world,
        tmp_path,
        "rl",
        rl.RLStageConfig,
        per_device_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        beta=0.1,
        reward_functions=(f"{SUPPORT}:alternating",),  # every group has reward variance
    )
