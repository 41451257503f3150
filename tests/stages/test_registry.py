"""The on-disk adapter registry: atomic publish, verification, names, deletion."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from stages import registry
from stages.registry import RegistryError


@pytest.fixture
def base_id(tiny_base_and_adapter: tuple[Path, Path]) -> registry.BaseIdentity:
    return registry.base_identity(tiny_base_and_adapter[0])


def publish(
    src: Path, reg: Path, base_id: registry.BaseIdentity, version: int = 1
) -> registry.Manifest:
    return registry.publish(
        src, reg, version=version, parent=None, base=base_id, stage="sft", data={"rows": 10}
    )


def test_publish_then_verify(
    tiny_base_and_adapter: tuple[Path, Path], tmp_path: Path, base_id: registry.BaseIdentity
) -> None:
    _, adapter = tiny_base_and_adapter
    manifest = publish(adapter, tmp_path, base_id)
    assert manifest.name == "v1" and manifest.stage == "sft" and manifest.data == {"rows": 10}
    assert set(manifest.files) >= {"adapter_config.json", "adapter_model.safetensors"}
    assert registry.verify(tmp_path / "v1") == manifest
    assert registry.list_versions(tmp_path) == [1]
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(str(tmp_path / "v1")).r == 2  # still a PEFT folder


def test_versions_are_immutable(
    tiny_base_and_adapter: tuple[Path, Path], tmp_path: Path, base_id: registry.BaseIdentity
) -> None:
    publish(tiny_base_and_adapter[1], tmp_path, base_id)
    with pytest.raises(RegistryError, match="immutable"):
        publish(tiny_base_and_adapter[1], tmp_path, base_id)


def test_crash_before_rename_leaves_nothing_listed(
    tiny_base_and_adapter: tuple[Path, Path],
    tmp_path: Path,
    base_id: registry.BaseIdentity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def crash(*args: object) -> None:
        raise KeyboardInterrupt  # the process dies between writing and renaming

    monkeypatch.setattr(registry.os, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        publish(tiny_base_and_adapter[1], tmp_path, base_id)
    monkeypatch.undo()
    assert registry.list_versions(tmp_path) == []
    assert not (tmp_path / "v1").exists()
    # Even a temp folder left behind by a hard kill is never listed, and is cleaned up.
    leftover = tmp_path / ".tmp-v1-deadbeef"
    shutil.copytree(tiny_base_and_adapter[1], leftover)
    assert registry.list_versions(tmp_path) == []
    assert registry.remove_partials(tmp_path) == [leftover]
    publish(tiny_base_and_adapter[1], tmp_path, base_id)
    assert registry.list_versions(tmp_path) == [1]


def test_partial_folder_without_manifest_is_refused(
    tiny_base_and_adapter: tuple[Path, Path], tmp_path: Path
) -> None:
    shutil.copytree(tiny_base_and_adapter[1], tmp_path / "v1")
    assert registry.list_versions(tmp_path) == []
    with pytest.raises(RegistryError, match="partial"):
        registry.verify(tmp_path / "v1")


@pytest.mark.parametrize("how", ["flip", "truncate", "remove", "add"])
def test_tampering_is_detected(
    tiny_base_and_adapter: tuple[Path, Path],
    tmp_path: Path,
    base_id: registry.BaseIdentity,
    how: str,
) -> None:
    publish(tiny_base_and_adapter[1], tmp_path, base_id)
    weights = tmp_path / "v1" / "adapter_model.safetensors"
    if how == "flip":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif how == "truncate":
        with weights.open("r+b") as fh:
            fh.truncate(weights.stat().st_size // 2)
    elif how == "remove":
        os.remove(weights)
    else:
        (tmp_path / "v1" / "extra.bin").write_bytes(b"x")
    with pytest.raises(RegistryError):
        registry.verify(tmp_path / "v1")


def test_pickle_weights_and_missing_files_are_refused(
    tiny_base_and_adapter: tuple[Path, Path], tmp_path: Path, base_id: registry.BaseIdentity
) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny_base_and_adapter[1], src)
    (src / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(RegistryError, match="safetensors"):
        publish(src, tmp_path / "reg", base_id)
    os.remove(src / "adapter_model.bin")
    os.remove(src / "adapter_config.json")
    with pytest.raises(RegistryError, match=r"adapter_config\.json"):
        publish(src, tmp_path / "reg", base_id)


@pytest.mark.parametrize("name", ["../v1", "v1/..", "v0", "/etc", "v1x", "", "v-1", "base"])
def test_names_are_validated(name: str) -> None:
    with pytest.raises(RegistryError):
        registry.parse_version(name)


def test_names_parse() -> None:
    assert registry.parse_version("v12") == 12
    assert registry.parse_version("12") == 12
    assert registry.version_name(3) == "v3"


def test_delete_and_base_identity(
    tiny_base_and_adapter: tuple[Path, Path], tmp_path: Path, base_id: registry.BaseIdentity
) -> None:
    publish(tiny_base_and_adapter[1], tmp_path, base_id)
    registry.delete(tmp_path, 1)
    assert registry.list_versions(tmp_path) == [] and not list(tmp_path.iterdir())
    # The config hash ignores where the model lives but not what it is.
    other = tmp_path / "copy"
    shutil.copytree(tiny_base_and_adapter[0], other)
    assert registry.base_identity(other).config_sha256 == base_id.config_sha256
    cfg = (other / "config.json").read_text().replace('"hidden_size": 16', '"hidden_size": 32')
    (other / "config.json").write_text(cfg)
    assert registry.base_identity(other).config_sha256 != base_id.config_sha256
