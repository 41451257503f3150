"""`tutord model import|list`: base models people bring, from the command line.

Argument parsing and rendering only; the work is in `daemon/model_store.py` (sources,
hashes, the table) and `stages/model_import.py` (the conversion, imported only by `import`
so that `list` starts without torch). Registered by `daemon.cli` as `tutord model`.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from daemon.cli.util import err, fail, guard, out, ready
from stages.model_import import DTYPES, ModelImportError

model_app = typer.Typer(
    no_args_is_help=True,
    help="Base models people bring: import a GGUF file or a Hugging Face folder, list them.",
)


@model_app.command("import")
def import_cmd(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            help="A GGUF file, a Hugging Face model folder, or a known name "
            "(smollm2-135m-instruct).",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            help="Name to use in model.base (default: from the source).", show_default=False
        ),
    ] = None,
    dtype: Annotated[str, typer.Option(help=f"Weights dtype: {', '.join(DTYPES)}.")] = "bfloat16",
    sha256: Annotated[
        str | None,
        typer.Option(help="Refuse the source unless its sha256 is this.", show_default=False),
    ] = None,
) -> None:
    """Convert a model into an ordinary Hugging Face folder in <home>/models/NAME and record
    it (source, hashes, chat template); then set `model.base = "NAME"` to use it."""
    from daemon.model_store import import_model

    c = ready(ctx)
    try:
        row = guard(
            lambda: import_model(
                c.home, c.engine, source, name, dtype, sha256, lambda line: err.print(line)
            )
        )
    except ModelImportError as exc:
        fail(str(exc))
    out.print(
        f"imported {row.name}: {row.architecture}, {row.parameters:,} parameters, {row.dtype}, "
        f"at {row.path}"
    )
    out.print(f"source: {row.source} (sha256 {row.source_sha256})")
    template = "its own" if row.chat_template else "none (prompts are sent as plain text)"
    out.print(f"chat template: {template}")
    out.print(f'use it: model.base = "{row.name}" in tutord.toml')


@model_app.command("list")
def list_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The imported models: name, architecture, size, dtype, source."""
    from daemon.model_store import list_models

    c = ready(ctx)
    rows = guard(lambda: list_models(c.engine))
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "architecture": r.architecture,
                        "parameters": r.parameters,
                        "dtype": r.dtype,
                        "path": r.path,
                        "source": r.source,
                        "source_kind": r.source_kind,
                        "source_sha256": r.source_sha256,
                        "weights_sha256": r.weights_sha256,
                        "imported_at": r.imported_at.isoformat(),
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    if not rows:
        out.print("no imported models; bring one in with `tutord model import SOURCE`")
        return
    for r in rows:
        out.print(
            f"{r.name}  {r.architecture}  {r.parameters / 1e6:.1f}M  {r.dtype}  "
            f"{r.source_kind}: {r.source}  imported {r.imported_at:%Y-%m-%d %H:%M}"
        )
