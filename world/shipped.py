"""The world's base model as shipped in the package (`world/base/`), checked by hash.

Pretraining the world's model to where it knows its arithmetic facts (`a+b=` completed
right for nearly every operand pair) takes 10 to 12 minutes on one CPU thread, so the
package ships the result of `tutord world bootstrap` with the default settings: the model folder in
`world/base/` and the SHA-256 of its weights here. `bootstrap` copies it instead of training
when the settings asked for are exactly the ones it was made with and the weights hash to
`SHA256`; `tutord world bootstrap --force` trains from scratch and says whether the weights
it made are the shipped ones bit for bit (they are on any x86-64 machine with AVX2 and the
same torch build: the training runs with its CPU numerics pinned, `world.pretrain_process`).

This module reads and copies files; it does not train (see `pretrain`) and imports no torch.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from stages.atomic import replace_dir, sha256_file

SHIPPED_DIR = Path(__file__).resolve().parent / "base"
WEIGHTS = "model.safetensors"
SHA256 = "5f8e4ff2603cfa82cb759641e3825f32e99890139ff70f4e8393b11288318fcf"
"""SHA-256 of the shipped `model.safetensors`."""


class ShippedModelError(RuntimeError):
    """The shipped model is damaged: its weights do not hash to `SHA256`."""


def weights_sha256(folder: Path) -> str:
    """SHA-256 (hex) of a model folder's `model.safetensors`."""
    return sha256_file(Path(folder) / WEIGHTS)


def shipped_manifest() -> dict[str, Any] | None:
    """The shipped model's `bootstrap.json`, or None when the package holds no model."""
    try:
        data = json.loads((SHIPPED_DIR / "bootstrap.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def matches(settings: dict[str, Any], manifest_format: int) -> bool:
    """True when the shipped model was made with exactly `settings` (a
    `BootstrapSettings.to_dict()`) in the current manifest format."""
    manifest = shipped_manifest()
    return (
        manifest is not None
        and manifest.get("format") == manifest_format
        and manifest.get("settings") == settings
    )


def verify() -> None:
    """Raise `ShippedModelError` unless the shipped weights hash to `SHA256`."""
    found = weights_sha256(SHIPPED_DIR)
    if found != SHA256:
        raise ShippedModelError(
            f"{SHIPPED_DIR / WEIGHTS} has SHA-256 {found}, expected {SHA256}: the package is "
            "damaged; reinstall it or run `tutord world bootstrap --force` to train the model"
        )


def install(out_dir: Path) -> Path:
    """Copy the verified shipped model to `out_dir` (through a temporary sibling and a
    rename, so `out_dir` never holds half a model); return `out_dir`."""
    verify()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{token}"
    try:
        shutil.copytree(SHIPPED_DIR, tmp)
        if weights_sha256(tmp) != SHA256:
            raise ShippedModelError(f"copying {SHIPPED_DIR} to {tmp} changed its weights")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
