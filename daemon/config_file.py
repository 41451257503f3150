"""The commented `tutord.toml` that `tutord init` writes, generated from the declarations.

`default_config()` walks `Settings`: every key with its default, under a comment made of
its description (pydantic models) or its attribute docstring (the config dataclasses of
the stages and of synthesis, less the fields tutord sets per run). Keys whose default is
unset are written commented out, with an example when the field declares one; tables of
user-named entries (`[tasks.NAME]`) are shown as a commented example. `keys()` lists every
key the file documents, for tests. Nothing here reads or writes files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import textwrap
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from daemon.settings import ENV_PREFIX, Settings
from stages.configs import field_docs, per_run_fields

WIDTH = 92
HEADER = f"""\
# tutord configuration. Every key is optional; the values shown are the defaults.
# Environment variables override this file: {ENV_PREFIX}<KEY>, nested keys joined by "__",
# e.g. {ENV_PREFIX}DATABASE_URL or {ENV_PREFIX}TRAIN__RL__MAX_STEPS.
# Generated from tutord's declarations (daemon/settings.py, stages/configs.py,
# judges/synth.py); `tutord init` writes it.
"""
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclasses.dataclass(frozen=True)
class _Key:
    name: str
    default: Any
    description: str
    example: Any = None
    has_example: bool = False


def _toml_key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def toml_value(value: Any) -> str:
    """`value` as a TOML value (None is not one: the caller comments the key out).

    >>> toml_value({"add": 0, "sub": 1}), toml_value((1e-05, "a")), toml_value(True)
    ('{ add = 0, sub = 1 }', '[1e-05, "a"]', 'true')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = ", ".join(f"{_toml_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(f"no TOML form for {value!r}")


def _comment(text: str, indent: str = "") -> list[str]:
    text = " ".join(text.split())
    if not text:
        return []
    return textwrap.wrap(text, WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")


def _is_table(kind: Any) -> bool:
    return isinstance(kind, type) and (
        issubclass(kind, BaseModel) or dataclasses.is_dataclass(kind)
    )


def _entry_type(kind: Any) -> Any:
    """The value type of `dict[str, V]` when V is a table, else None."""
    if typing.get_origin(kind) is dict:
        value = typing.get_args(kind)[1]
        if _is_table(value):
            return value
    return None


def _fields(kind: type) -> Iterator[tuple[str, Any, FieldInfo | None, str]]:
    """(name, annotation, FieldInfo or None, description) of a model's or dataclass's
    configurable fields, in declaration order."""
    if issubclass(kind, BaseModel):
        for name, info in kind.model_fields.items():
            yield name, info.annotation, info, info.description or ""
        return
    hints = typing.get_type_hints(kind)
    docs = field_docs(kind)
    skip = per_run_fields(kind)
    for f in dataclasses.fields(kind):
        if f.name not in skip:
            yield f.name, hints[f.name], None, docs.get(f.name, "")


def _default(name: str, info: FieldInfo | None, instance: Any) -> Any:
    """The field's value in `instance`, else its declared default, else None."""
    if instance is not None and hasattr(instance, name):
        return getattr(instance, name)
    if info is not None and not info.is_required():
        return info.get_default(call_default_factory=True)
    return None


def _instance(kind: type) -> Any:
    """A default instance of a model or dataclass, or None when it has required fields."""
    try:
        return kind.model_construct() if issubclass(kind, BaseModel) else kind()
    except TypeError:
        return None


def _class_doc(kind: type) -> str:
    """The first paragraph of a class's docstring."""
    return (kind.__doc__ or "").strip().split("\n\n")[0]


def _plain(value: Any) -> Any:
    """Models and dataclasses as dicts, recursively (for inline values)."""
    if isinstance(value, BaseModel):
        return value.model_dump()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _render_table(
    lines: list[str], kind: type, instance: Any, path: tuple[str, ...], commented: bool
) -> None:
    """Append the keys of table `kind` (values from `instance`, else the field defaults),
    then its sub-tables; `commented` writes every line as a comment (an example table)."""
    mark = "# " if commented else ""
    subtables: list[tuple[str, type, str, FieldInfo | None, bool]] = []
    for name, annotation, info, description in _fields(kind):
        if _is_table(annotation):
            subtables.append((name, annotation, description, info, False))
            continue
        entry = _entry_type(annotation)
        if entry is not None:
            subtables.append((name, entry, description, info, True))
            continue
        default = _plain(_default(name, info, instance))
        lines.extend(_comment(description))
        key = _toml_key(name)
        if default is None:
            examples = (info.examples if info is not None else None) or []
            required = info is not None and info.is_required()
            shown = toml_value(examples[0]) if examples else "(required)" if required else "(unset)"
            lines.append(f"# {key} = {shown}")
        else:
            lines.append(f"{mark}{key} = {toml_value(default)}")
    for name, sub, description, info, named_entries in subtables:
        sub_path = (*path, name)
        header = ".".join(_toml_key(p) for p in sub_path)
        lines.append("")
        lines.extend(_comment(description or _class_doc(sub)))
        if named_entries:
            lines.append(f"# [{header}.NAME]")
            _render_table(lines, sub, _instance(sub), (*sub_path, "NAME"), True)
        else:
            lines.append(f"{mark}[{header}]")
            value = _default(name, info, instance)
            _render_table(
                lines, sub, value if value is not None else _instance(sub), sub_path, commented
            )


def default_config() -> str:
    """The commented default `tutord.toml`."""
    lines: list[str] = [HEADER.rstrip("\n"), ""]
    _render_table(lines, Settings, Settings.model_construct(), (), False)
    return "\n".join(lines).rstrip("\n") + "\n"


def render_tables(config: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """A nested dict as TOML: scalars and lists as keys, dicts as `[tables]` (for files a
    program writes, such as the real-model demo's `tutord.toml`).

    >>> print(render_tables({"model": {"base": "m", "threads": 2}, "tasks": {"a": {"x": 1}}}))
    [model]
    base = "m"
    threads = 2
    <BLANKLINE>
    [tasks.a]
    x = 1
    <BLANKLINE>
    <BLANKLINE>
    """
    lines: list[str] = []
    scalars = {k: v for k, v in config.items() if not isinstance(v, dict)}
    if scalars:
        if path:
            lines.append(f"[{'.'.join(_toml_key(p) for p in path)}]")
        lines.extend(f"{_toml_key(k)} = {toml_value(v)}" for k, v in scalars.items())
        lines.append("")
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in config.items():
        if isinstance(value, dict):
            text += render_tables(value, (*path, str(key)))
    return text


def keys(kind: type = Settings, prefix: str = "") -> list[str]:
    """Every dotted key the default file documents (tables of user-named entries as NAME)."""
    out: list[str] = []
    for name, annotation, _info, _description in _fields(kind):
        if _is_table(annotation):
            out.extend(keys(annotation, f"{prefix}{name}."))
        elif (entry := _entry_type(annotation)) is not None:
            out.extend(keys(entry, f"{prefix}{name}.NAME."))
        else:
            out.append(prefix + name)
    return out
