"""The adapter registry on disk: immutable, verified adapter versions under `adapters/`.

An adapter version is a folder `v<N>` holding a PEFT LoRA adapter (safetensors only)
and `manifest.json`: version, parent version, base-model identity (id plus a hash of
its config), the stage that produced it, a summary of its training data, the sha256 of
every file, and its creation time. Versions are published atomically (temporary
folder, fsync, rename) and verified on load: a tampered or partial folder is refused, and
so, whatever its manifest says, is a version that is a symbolic link or resolves outside
its registry, that holds a link, or that holds pickle-based weights (by name: `.bin`,
`.pt`, `.pth`, `.pkl`, `.ckpt`, ...; or by content) or no `adapter_model.safetensors`.
`check_weights` applies the last rules to any adapter folder a loader is given.

Which version is production, and the history of moves, live in the database and are
kept by `daemon/adapters.py`; this module only reads and writes folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stages.atomic import fsync_dir, sha256_file

MANIFEST = "manifest.json"
FORMAT = 1
_NAME = re.compile(r"^v([1-9][0-9]{0,8})$")
_REQUIRED = ("adapter_config.json", "adapter_model.safetensors")
_FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".dill")
_PICKLE_MAGIC = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format: a zip archive holding a pickle
_SAFETENSORS = ".safetensors"
_TMP_PREFIX = ".tmp-"


class RegistryError(Exception):
    """An adapter folder that cannot be used: missing, partial, tampered, or misnamed."""


class BaseIdentity(BaseModel):
    """Which base model an adapter belongs to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    config_sha256: str


class Manifest(BaseModel):
    """What `manifest.json` records about one adapter version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = FORMAT
    name: str
    version: int = Field(ge=1)
    parent: int | None = None
    base: BaseIdentity
    stage: str
    data: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str]
    created_at: datetime


def version_name(version: int) -> str:
    """`3` -> `v3`."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RegistryError(f"adapter version must be a positive integer, not {version!r}")
    return f"v{version}"


def parse_version(name: str) -> int:
    """`v3` or `3` -> 3; anything else (a path, `..`, `v0`) is refused."""
    text = str(name).strip()
    if text.isdigit():
        text = f"v{text}"
    match = _NAME.match(text)
    if not match:
        raise RegistryError(f"not an adapter version name: {name!r} (expected v1, v2, ...)")
    return int(match.group(1))


def base_identity(base: str | Path) -> BaseIdentity:
    """Identity of a base model: its path or hub id plus the sha256 of its canonical config.

    A local folder's `config.json` is read directly; for a hub id the config is read
    through transformers (from the local cache when offline).
    """
    path = Path(base)
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        ident = str(path.resolve())
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(base)).to_dict()
        ident = str(base)
    config.pop("_name_or_path", None)
    config.pop("transformers_version", None)
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return BaseIdentity(id=ident, config_sha256=hashlib.sha256(canonical.encode()).hexdigest())


def _unsafe_reason(path: Path) -> str | None:
    """Why a loader must not be given the regular file `path`, if it must not: pickle-based
    by name, or by its first bytes (a pickle, or a zip archive as `torch.save` writes). A
    `.safetensors` file is read by the safetensors parser only, which runs no code, so its
    bytes are not sniffed (a header length can begin like a pickle)."""
    name = path.name.lower()
    if name.endswith(_FORBIDDEN_SUFFIXES):
        return "pickle-based weights are refused (by name); adapters load from safetensors only"
    if name.endswith(_SAFETENSORS):
        return None
    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(_PICKLE_MAGIC) or head.startswith(_ZIP_MAGIC):
        return "pickle-based content is refused; adapters load from safetensors only"
    return None


def _real_files(folder: Path) -> list[Path]:
    """Every regular file under `folder`; a symbolic link (to a file or a folder) or anything
    but files and folders anywhere inside is refused."""
    files: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in sorted(dirs) + sorted(names):
            entry = Path(root) / name
            if entry.is_symlink():
                raise RegistryError(
                    f"{entry}: a symbolic link (to {os.readlink(entry)}); an adapter folder "
                    "holds only real files and folders"
                )
            if name in names:
                if not entry.is_file():
                    raise RegistryError(f"{entry}: not a regular file")
                files.append(entry)
    return sorted(files)


def check_weights(folder: Path) -> list[Path]:
    """Refuse an adapter folder a loader must not read, with or without a manifest: links
    inside it, pickle-based files, or no `adapter_model.safetensors` beside
    `adapter_config.json`. Returns its regular files."""
    folder = Path(folder)
    if folder.is_symlink():
        raise RegistryError(f"{folder}: a symbolic link (to {os.readlink(folder)}), not a folder")
    if not folder.is_dir():
        raise RegistryError(f"{folder}: not a folder")
    files = _real_files(folder)
    for p in files:
        reason = _unsafe_reason(p)
        if reason is not None:
            raise RegistryError(f"{p}: {reason}")
    for required in _REQUIRED:
        if not (folder / required).is_file():
            raise RegistryError(f"{folder}: missing {required} (save with safe_serialization)")
    return files


def _check_source(source: Path) -> list[Path]:
    if not source.is_dir():
        raise RegistryError(f"{source}: not a folder")
    files = sorted(p for p in source.rglob("*") if p.is_file())
    for required in _REQUIRED:
        if not (source / required).is_file():
            raise RegistryError(f"{source}: missing {required} (save with safe_serialization)")
    for p in files:
        reason = _unsafe_reason(p)
        if reason is not None:
            raise RegistryError(f"{p}: {reason}")
        if p.name == MANIFEST:
            raise RegistryError(f"{p}: the source already has a manifest")
    return files


def publish(
    source: Path,
    registry: Path,
    *,
    version: int,
    parent: int | None,
    base: BaseIdentity,
    stage: str,
    data: dict[str, Any] | None = None,
) -> Manifest:
    """Copy the adapter in `source` into `registry/v<version>` atomically and return its manifest.

    The copy is built in a temporary folder beside the target, every file fsynced, then
    renamed into place; a crash at any point leaves at most a `.tmp-*` folder, which is
    never listed and is removed by `remove_partials`. An existing version is never
    overwritten.
    """
    name = version_name(version)
    if parent is not None:
        version_name(parent)
    files = _check_source(source)
    registry.mkdir(parents=True, exist_ok=True)
    target = registry / name
    if target.exists():
        raise RegistryError(f"{target}: version {name} exists already; versions are immutable")
    tmp = registry / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        hashes: dict[str, str] = {}
        for src in files:
            rel = src.relative_to(source).as_posix()
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            with dst.open("rb") as fh:
                os.fsync(fh.fileno())
            hashes[rel] = sha256_file(dst)
        manifest = Manifest(
            name=name,
            version=version,
            parent=parent,
            base=base,
            stage=stage,
            data=data or {},
            files=hashes,
            created_at=datetime.now(UTC),
        )
        with (tmp / MANIFEST).open("w", encoding="utf-8") as fh:
            fh.write(manifest.model_dump_json(indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        os.rename(tmp, target)  # fails if target appeared meanwhile: never overwrites
        fsync_dir(registry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_location(path: Path) -> None:
    """A version is a real folder directly inside its registry: not a symbolic link, and
    resolving to where it says it is."""
    if path.is_symlink():
        raise RegistryError(
            f"{path}: a symbolic link (to {os.readlink(path)}); a version must be a real "
            "folder inside the registry"
        )
    if not path.is_dir():
        raise RegistryError(f"{path}: no such adapter folder")
    resolved = path.resolve()
    if resolved != path.parent.resolve() / path.name:
        raise RegistryError(f"{path}: resolves to {resolved}, outside its registry")


def verify(path: Path) -> Manifest:
    """Check an adapter folder against its manifest; raise `RegistryError` if anything is off.

    Whatever the manifest says, the folder must be a real folder inside its registry with
    no links in it, hold safetensors weights and no pickle-based file (`check_weights`).
    """
    _check_location(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise RegistryError(f"{path}: no {MANIFEST}; a partial or foreign folder")
    try:
        manifest = Manifest.model_validate_json(manifest_path.read_bytes())
    except ValidationError as exc:
        raise RegistryError(f"{manifest_path}: not a valid manifest: {exc}") from None
    if manifest.name != path.name or manifest.name != version_name(manifest.version):
        raise RegistryError(
            f"{path}: the manifest names {manifest.name} (version {manifest.version}), "
            f"the folder {path.name}"
        )
    present = {p.relative_to(path).as_posix() for p in check_weights(path) if p != manifest_path}
    missing = sorted(set(manifest.files) - present)
    extra = sorted(present - set(manifest.files))
    if missing:
        raise RegistryError(f"{path}: files missing: {', '.join(missing)}")
    if extra:
        raise RegistryError(f"{path}: files not in the manifest: {', '.join(extra)}")
    for rel, expected in manifest.files.items():
        if sha256_file(path / rel) != expected:
            raise RegistryError(f"{path / rel}: sha256 does not match the manifest (tampered?)")
    return manifest


def adapter_path(registry: Path, version: int) -> Path:
    """The folder of `version` inside `registry` (no check that it exists)."""
    return registry / version_name(version)


def list_versions(registry: Path) -> list[int]:
    """Version numbers with a complete folder (a manifest), ascending; partials and symbolic
    links are skipped."""
    if not registry.is_dir():
        return []
    found = []
    for child in registry.iterdir():
        match = _NAME.match(child.name)
        if match and not child.is_symlink() and child.is_dir() and (child / MANIFEST).is_file():
            found.append(int(match.group(1)))
    return sorted(found)


def _remove(path: Path) -> None:
    """Remove a folder, or only the link when `path` is a symbolic link (never its target)."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_partials(registry: Path) -> list[Path]:
    """Delete leftovers of interrupted publishes and deletions; return what was removed."""
    removed = []
    if registry.is_dir():
        for child in registry.iterdir():
            if child.name.startswith((_TMP_PREFIX, ".trash-")):
                _remove(child)
                removed.append(child)
    return removed


def delete(registry: Path, version: int) -> None:
    """Remove a version's folder: renamed away first, so it vanishes in one step. A version
    that is a symbolic link loses the link only."""
    path = adapter_path(registry, version)
    if not path.exists() and not path.is_symlink():
        return
    trash = registry / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
    os.rename(path, trash)
    _remove(trash)
