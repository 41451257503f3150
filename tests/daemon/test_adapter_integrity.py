"""What the registry refuses whatever its manifests say: pickle-based weights anywhere in a
version, version folders (or files in them) that are symbolic links or resolve outside the
registry; and what a refused production does to a cycle and to `tutord status`.

Each refusal is checked where adapters are used: `tutord adapters show`, `tutord rollback`,
promotion, the production policy of synthesis, and the loaders themselves.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from daemon import adapters, migrate
from daemon.cli import app
from daemon.cycle import run_cycle
from daemon.home import Home
from daemon.models import Cycle
from daemon.policy import production_adapter
from daemon.synth_run import run_synth
from replay.db import make_engine, session_scope
from stages import registry
from stages.atomic import sha256_file
from stages.generate.api import AdapterRef
from stages.registry import RegistryError
from tests.registry_support import publish_version


@dataclass
class Registry:
    """An initialized home whose production line is base <- v1 <- v2 (production v2)."""

    home: Home
    engine: Engine
    base: Path
    source: Path

    def folder(self, version: int) -> Path:
        return registry.adapter_path(self.home.adapters, version)

    def production(self) -> int | None:
        with session_scope(self.engine) as session:
            return adapters.production(session)

    def tutord(self, *args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(app, ["--home", str(self.home.root), *args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback where an error message was due
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def reg(tmp_path: Path, tiny_base_and_adapter: tuple[Path, Path]) -> Iterator[Registry]:
    base, source = tiny_base_and_adapter
    home = Home(tmp_path / "home")
    home.create()
    engine = make_engine(home.default_database_url())
    migrate.upgrade(engine)
    parent = None
    for _ in range(2):
        version = publish_version(engine, home.adapters, source, base, parent)
        adapters.move_production(
            engine, version, kind="promote", actor="test", reason="gate", adapters_dir=home.adapters
        )
        parent = version
    yield Registry(home, engine, base, source)
    engine.dispose()


def rewrite_manifest(folder: Path) -> None:
    """Make the manifest agree with whatever the folder now holds (what someone who can
    write to the registry can do): every file listed with its real sha256."""
    manifest_path = folder / registry.MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["files"] = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != registry.MANIFEST
    }
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")


def smuggle_pickle(folder: Path, name: str, *, replace_safetensors: bool = False) -> None:
    """Put a pickle file `name` into `folder` and rewrite its manifest to list it."""
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(pickle.dumps({"base_model.model.lora_A.weight": [0.0]}, protocol=4))
    if replace_safetensors:
        (folder / "adapter_model.safetensors").unlink()
    rewrite_manifest(folder)


PICKLES = [
    "adapter_model.bin",
    "ADAPTER_MODEL.BIN",
    "weights.pt",
    "nested/optimizer.pth",
    "state.pkl",
    "last.ckpt",
]


# ------------------------------------------------------------------ pickle-based weights


@pytest.mark.parametrize("name", PICKLES)
def test_a_pickle_listed_in_a_rewritten_manifest_is_refused(reg: Registry, name: str) -> None:
    folder = reg.folder(1)
    smuggle_pickle(folder, name)
    with pytest.raises(RegistryError, match="pickle") as refused:
        registry.verify(folder)
    assert name in str(refused.value)


def test_a_pickle_under_any_name_is_refused(reg: Registry) -> None:
    """Pickle (or torch.save zip) content is refused whatever the file is called."""
    folder = reg.folder(1)
    smuggle_pickle(folder, "notes.txt")
    with pytest.raises(RegistryError, match=r"notes\.txt.*pickle"):
        registry.verify(folder)


def test_show_refuses_a_smuggled_pickle(reg: Registry) -> None:
    smuggle_pickle(reg.folder(1), "adapter_model.bin", replace_safetensors=True)
    code, out, err = reg.tutord("adapters", "show", "v1")
    assert code == 1 and "adapter_model.bin" in err and "pickle" in err
    assert '"name"' not in out  # no manifest printed
    code, out, _ = reg.tutord("adapters", "show", "v2")
    assert code == 0 and '"name": "v2"' in out  # the intact version still shows


def test_rollback_refuses_a_smuggled_pickle(reg: Registry) -> None:
    smuggle_pickle(reg.folder(1), "adapter_model.bin")
    code, _, err = reg.tutord("rollback", "--reason", "test")
    assert code == 1 and "pickle" in err
    code, _, err = reg.tutord("rollback", "--to", "v1")
    assert code == 1 and "pickle" in err
    assert reg.production() == 2
    with pytest.raises(RegistryError, match="pickle"):
        adapters.move_production(
            reg.engine, 1, kind="promote", actor="t", reason=None, adapters_dir=reg.home.adapters
        )
    assert reg.production() == 2


def test_synthesis_refuses_a_production_with_a_smuggled_pickle(reg: Registry) -> None:
    smuggle_pickle(reg.folder(2), "adapter_model.bin", replace_safetensors=True)
    with pytest.raises(RegistryError, match="pickle"):
        production_adapter(reg.engine, reg.home)
    # Refused before any model is loaded (this home has no base model at all: without the
    # refusal, synthesis would stop on the missing base instead).
    with pytest.raises(RegistryError, match="pickle"):
        run_synth(reg.engine, reg.home, reg.home.settings())


@pytest.mark.parametrize("replace_safetensors", [False, True])
def test_the_loaders_refuse_pickle_weights(
    reg: Registry, tmp_path: Path, replace_safetensors: bool
) -> None:
    """The transformers backend and the training policy load safetensors only, even for a
    folder outside the registry (no manifest at all)."""
    from stages.generate.hf import TransformersBackend
    from stages.policy import load_policy, lora_config

    folder = tmp_path / "loose"
    shutil.copytree(reg.source, folder)
    (folder / "adapter_model.bin").write_bytes(pickle.dumps({"w": [0.0]}))
    if replace_safetensors:
        (folder / "adapter_model.safetensors").unlink()
    from world.tokenizer import build_tokenizer

    base = tmp_path / "base"  # the tiny base with a tokenizer, as a backend needs one
    shutil.copytree(reg.base, base)
    build_tokenizer().save_pretrained(base)
    backend = TransformersBackend(base, device="cpu")
    with pytest.raises(RegistryError, match="pickle"):
        backend.load_adapter(AdapterRef("loose", folder))
    assert backend.adapters == {}
    import torch

    with pytest.raises(RegistryError, match="pickle"):
        load_policy(
            str(reg.base),
            str(folder),
            lora=lora_config(2, 4, 0.0, ("q_proj", "v_proj")),
            dtype=torch.float32,
        )


# ------------------------------------------------------------------ symbolic links


def test_a_symlinked_version_folder_is_refused(reg: Registry, tmp_path: Path) -> None:
    """v3 is a valid, manifest-checked version, but it lives outside the registry."""
    outside = tmp_path / "elsewhere"
    manifest = registry.publish(
        reg.source,
        outside,
        version=3,
        parent=2,
        base=registry.base_identity(reg.base),
        stage="sft",
    )
    registry.verify(outside / "v3")  # fine where it is
    os.symlink(outside / "v3", reg.folder(3), target_is_directory=True)
    with session_scope(reg.engine) as session:
        adapters.register(session, manifest)
    with pytest.raises(RegistryError, match="symbolic link"):
        registry.verify(reg.folder(3))
    assert registry.list_versions(reg.home.adapters) == [1, 2]
    code, _, err = reg.tutord("adapters", "show", "v3")
    assert code == 1 and "symbolic link" in err
    code, _, err = reg.tutord("rollback", "--to", "v3")
    assert code == 1 and "symbolic link" in err
    with pytest.raises(RegistryError, match="symbolic link"):
        adapters.move_production(
            reg.engine, 3, kind="promote", actor="t", reason=None, adapters_dir=reg.home.adapters
        )
    assert reg.production() == 2
    # Retention removes the link, never what it points to.
    adapters.prune(reg.engine, reg.home.adapters, keep_last=0)
    assert not reg.folder(3).is_symlink() and (outside / "v3" / registry.MANIFEST).is_file()


def test_a_version_linked_to_another_version_is_refused(reg: Registry) -> None:
    """Even a link to a folder inside the registry is no version: v3 -> v2."""
    os.symlink(reg.folder(2), reg.folder(3), target_is_directory=True)
    with pytest.raises(RegistryError, match="symbolic link"):
        registry.verify(reg.folder(3))
    code, _, err = reg.tutord("adapters", "show", "3")
    assert code == 1 and "symbolic link" in err


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_symlink_inside_a_version_is_refused(reg: Registry, tmp_path: Path, what: str) -> None:
    """A link inside the folder is refused even when its content matches the manifest."""
    folder = reg.folder(1)
    if what == "file":
        weights = folder / "adapter_model.safetensors"
        copy = tmp_path / "outside.safetensors"
        shutil.copyfile(weights, copy)
        weights.unlink()
        os.symlink(copy, weights)  # same bytes, so the manifest's hash still matches
        link = weights
    else:
        outside = tmp_path / "extra"
        outside.mkdir()
        (outside / "notes.md").write_text("hello\n", encoding="utf-8")
        link = folder / "extra"
        os.symlink(outside, link, target_is_directory=True)
        rewrite_manifest(folder)
    with pytest.raises(RegistryError, match="symbolic link") as refused:
        registry.verify(folder)
    assert str(link) in str(refused.value)


# ------------------------------------------------------------------ a refused production


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_tampered_production_fails_the_cycle_and_status_says_what_to_do(reg: Registry) -> None:
    flip_last_byte(reg.folder(2) / "adapter_model.safetensors")
    summary = run_cycle(reg.engine, reg.home, reg.home.settings())
    assert (summary.state, summary.outcome) == ("failed", "failed")
    reason = summary.outcome_reason or ""
    assert reason.startswith("production v2 is refused: ")
    assert "sha256 does not match" in reason
    assert "`tutord rollback --to v1`" in reason
    with session_scope(reg.engine) as session:
        row = session.execute(select(Cycle).where(Cycle.id == summary.cycle_id)).scalar_one()
        assert row.state == "failed" and row.finished_at is not None
        assert row.outcome_reason == reason and "RegistryError" in (row.error or "")

    # Not stuck: the next cycle is a new one, refused the same way.
    code, out, err = reg.tutord("cycle")
    assert code == 1 and f"cycle {summary.cycle_id + 1} failed" in err
    assert "production v2 is refused" in err

    code, out, _ = reg.tutord("status")
    assert code == 0
    assert "production v2 is refused" in out and "tutord rollback --to v1" in out
    code, out, _ = reg.tutord("status", "--json")
    info = json.loads(out)
    assert info["production"] == "v2" and "tutord rollback --to v1" in info["production_refused"]
    assert info["cycles"][0]["state"] == "failed"

    # Doing what it says works, and status is quiet again.
    code, out, _ = reg.tutord("rollback", "--to", "v1", "--reason", "v2 tampered")
    assert code == 0 and "v2 -> v1" in out
    code, out, _ = reg.tutord("status", "--json")
    assert json.loads(out)["production_refused"] is None


def test_the_advice_skips_earlier_productions_that_are_refused_too(reg: Registry) -> None:
    flip_last_byte(reg.folder(2) / "adapter_model.safetensors")
    smuggle_pickle(reg.folder(1), "adapter_model.bin")
    summary = run_cycle(reg.engine, reg.home, reg.home.settings())
    assert summary.state == "failed"
    assert "`tutord rollback --to base`" in (summary.outcome_reason or "")
    assert "--to v1" not in (summary.outcome_reason or "")
