"""The `TUTORD_*` environment of tutord's settings, and the messages of a configuration
that cannot be used.

It holds the environment prefix, reads `TUTORD_*` variables as the nested keys
pydantic-settings sees, and turns what went wrong into one message per key, naming the key
and where its value comes from (the file or the environment variable): unknown keys (with
the keys the table accepts), bad values, per-run fields of a config dataclass set by the
user, and an environment variable that is not the JSON its table or list needs.

It does not declare the settings, read `tutord.toml` or raise `SettingsError`
(`daemon/settings.py` does all three); the model to check against is passed in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError as SourceError

from stages.configs import per_run_fields

ENV_PREFIX = "TUTORD_"


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def per_run_keys(
    data: Mapping[str, Any], model: type[BaseModel], prefix: str = ""
) -> Iterator[tuple[str, str]]:
    """The dotted keys in `data` (raw file or environment values) that name a per-run field of
    a config dataclass (`stages.configs.per_run`), each with where its value comes from."""
    for name, value in data.items():
        info = model.model_fields.get(name)
        if info is None or not isinstance(value, Mapping):
            continue
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from per_run_keys(value, kind, f"{prefix}{name}.")
        elif isinstance(kind, type) and dataclasses.is_dataclass(kind):
            fixed = per_run_fields(kind)
            for key in value:
                if key in fixed:
                    yield f"{prefix}{name}.{key}", fixed[key]


def environment_tree() -> dict[str, Any]:
    """`TUTORD_*` variables as nested keys, the way pydantic-settings reads them."""
    tree: dict[str, Any] = {}
    for var, value in os.environ.items():
        if not var.upper().startswith(ENV_PREFIX):
            continue
        *parents, leaf = var[len(ENV_PREFIX) :].lower().split("__")
        node: Any = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = value
    return tree


def per_run_problems(path: Path, data: Mapping[str, Any], model: type[BaseModel]) -> list[str]:
    """A message for every per-run field that the file or the environment sets."""
    problems = []
    for in_file, tree in ((True, data), (False, environment_tree())):
        for key, hint in per_run_keys(tree, model):
            source = f"in {path}" if in_file else "$" + ENV_PREFIX + key.upper().replace(".", "__")
            comes = f" (from {hint})" if hint else ""
            problems.append(
                f"key '{key}' ({source}): tutord sets this for each run{comes}; remove it"
            )
    return problems


def known_keys(loc: Sequence[int | str], model: type[BaseModel]) -> list[str] | None:
    """The keys the table at `loc` (a key's location, the key itself last) accepts, or None
    when `loc` does not lead through known tables."""
    kind: Any = model
    for part in loc[:-1]:
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            return None
        info = kind.model_fields.get(str(part))
        kind = info.annotation if info is not None else None
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return list(kind.model_fields)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        fixed = per_run_fields(kind)
        return [f.name for f in dataclasses.fields(kind) if f.name not in fixed]
    return None


def _message(err: Any, model: type[BaseModel]) -> str:
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        known = known_keys(err["loc"], model)
        return "unknown key" + (f"; known keys: {', '.join(known)}" if known else "")
    if err["type"] == "value_error" and "error" in err.get("ctx", {}):
        return str(err["ctx"]["error"])  # without pydantic's "Value error, " prefix
    return str(err["msg"])


def validation_problems(exc: ValidationError, path: Path, model: type[BaseModel]) -> list[str]:
    """A message for every error pydantic found, naming the key, the file and the variable."""
    problems = []
    for err in exc.errors():
        key = _location(err["loc"])
        env = ENV_PREFIX + key.upper().replace(".", "__")
        problems.append(f"key '{key}' (in {path} or ${env}): {_message(err, model)}")
    return problems


def environment_json_problems(exc: SourceError, path: Path) -> list[str]:
    """What pydantic-settings could not decode: the `TUTORD_*` variables under the field
    it names whose value is not JSON (a table or a list is given as JSON there)."""
    match = re.search(r'field "([^"]+)"', str(exc))
    if match is None:
        return [f"{path} or the {ENV_PREFIX}* environment: {exc}"]
    field = match.group(1)
    stem = ENV_PREFIX + field.upper()
    problems = []
    for var, value in sorted(os.environ.items()):
        upper = var.upper()
        if upper != stem and not upper.startswith(stem + "__"):
            continue
        if upper != stem and not value.lstrip().startswith(("{", "[")):
            continue  # a scalar deeper down: not what failed to decode
        try:
            json.loads(value)
        except ValueError as err:
            key = upper[len(ENV_PREFIX) :].lower().replace("__", ".")
            problems.append(
                f"key '{key}' (${var}): not valid JSON ({err}); the environment gives a "
                "table as a JSON object and a list as a JSON array"
            )
    if not problems:
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        problems.append(f"key '{field}' (in {path} or ${stem}): cannot be decoded{cause}")
    return problems
