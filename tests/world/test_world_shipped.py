"""The base model shipped in the package: made with the default settings, copied (not
trained) by a default bootstrap, refused when damaged, and rebuilt bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli import app
from world import pretrain, shipped
from world.pretrain import MANIFEST_FORMAT, BootstrapSettings, bootstrap, read_manifest


def test_the_shipped_model_is_made_with_the_default_settings() -> None:
    manifest = shipped.shipped_manifest()
    assert manifest is not None, f"no model shipped in {shipped.SHIPPED_DIR}"
    assert manifest["settings"] == BootstrapSettings().to_dict()
    assert manifest["format"] == MANIFEST_FORMAT
    assert manifest["sha256"] == shipped.SHA256 == shipped.weights_sha256(shipped.SHIPPED_DIR)


def test_a_default_bootstrap_copies_the_shipped_model_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the shipped model matches")

    monkeypatch.setattr(pretrain, "_train", no_training)
    out = bootstrap(tmp_path / "base")
    assert shipped.weights_sha256(out) == shipped.SHA256
    assert read_manifest(out) == shipped.shipped_manifest()
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no temporary folder left

    cli = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "world", "bootstrap"])
    assert cli.exit_code == 0, cli.output
    assert "copied from the package" in cli.stdout and "bit for bit" in cli.stdout


def test_damaged_shipped_weights_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    damaged = tmp_path / "shipped"
    shutil.copytree(shipped.SHIPPED_DIR, damaged)
    weights = damaged / shipped.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", damaged)
    with pytest.raises(shipped.ShippedModelError, match="SHA-256"):
        bootstrap(tmp_path / "base")
    assert not (tmp_path / "base").exists()


@pytest.mark.slow
@pytest.mark.longest
def test_tutord_world_bootstrap_rebuilds_the_shipped_weights_bit_for_bit(tmp_path: Path) -> None:
    """About 12 minutes on one thread: the whole default pretraining. On a CPU with AMX,
    where the known bug below makes the rebuild differ, only 20 steps are run (the whole
    one took 888 s of CI's 30-minute budget there) and the comparison is the expected
    failure."""
    out = tmp_path / "rebuilt"
    args = ["--home", str(tmp_path / "home"), "world", "bootstrap", "--out", str(out)]
    short = ["--max-steps", "20"] if _has_amx() else []
    cli = CliRunner().invoke(app, [*args, "--force", "--json", *short])
    assert cli.exit_code == 0, cli.output
    made = json.loads(cli.stdout)
    wanted = BootstrapSettings(max_steps=20) if short else BootstrapSettings()
    assert made["settings"] == wanted.to_dict()
    assert made["sha256"] == shipped.weights_sha256(out)
    if short:
        pytest.xfail(
            "KNOWN BUG: on a CPU with AMX the pinned numerics do not reproduce the shipped "
            "weights (the first step's loss differs in its last bit; world/pretrain_process.py), "
            "so only a 20-step rebuild was run here"
        )
    assert made["sha256"] == shipped.SHA256, "the rebuilt weights differ from the shipped ones"


def _has_amx() -> bool:
    """Whether this CPU has AMX tiles (Sapphire Rapids and later). AVX2-only and AVX-512
    machines rebuilt the shipped weights exactly; one with AMX did not (2026-12-04)."""
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
