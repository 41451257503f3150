"""`tutord world ...`: the embedded arith world from the command line.

Commands: `bootstrap` pretrains (or finds cached) the world's base model and prints where it
is with its pretraining summary; `logs` writes interaction logs of one task family as JSONL
to stdout or a file. This module parses arguments and renders results; the work is in
`world`, imported inside the commands so that the rest of the CLI starts without torch. It is
registered by `daemon.cli` (`app.add_typer(world_app, name="world")`).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from daemon.cli.util import guard
from daemon.home import Home
from daemon.policy import WORLD_BASE
from stages.atomic import write_atomic

world_app = typer.Typer(
    no_args_is_help=True,
    help="The embedded arith world: bootstrap its tiny base model, generate interaction logs.",
)

EXIT_USAGE = 2


def default_model_dir(home: Home) -> Path:
    """Where `bootstrap` writes without `--out`: `<home>/world/arith-base`."""
    return home.root / WORLD_BASE


@world_app.command("bootstrap")
def bootstrap_cmd(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option(help="Model folder (default: <home>/world/arith-base).", show_default=False),
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(
            min=0.001, help="Wall-clock training budget (default: world.bootstrap_minutes)."
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the weights and the corpus (default: world.seed).")
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(min=1, help="Training steps (default: world.bootstrap_steps)."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(help="Train even if a matching model exists (cached or shipped)."),
    ] = False,
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU threads for training (default: world.threads).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Pretrain the world's base model on CPU (cached: same settings, no retraining; the
    default settings copy the model shipped in the package, checked by its hash)."""
    from world import shipped
    from world.pretrain import bootstrap, read_manifest, resolve_settings, source

    world = guard(lambda: ctx.obj.settings).world
    minutes = world.bootstrap_minutes if minutes is None else minutes
    seed = world.seed if seed is None else seed
    max_steps = world.bootstrap_steps if max_steps is None else max_steps
    threads = world.threads if threads is None else threads
    target = out if out is not None else default_model_dir(ctx.obj.home)
    settings = resolve_settings(minutes, seed, max_steps, None)
    how = source(target, settings, force)
    bootstrap(target, minutes=minutes, seed=seed, max_steps=max_steps, force=force, threads=threads)
    manifest = read_manifest(target) or {}
    if as_json:
        typer.echo(
            json.dumps({"path": str(target), "cached": how == "cached", **manifest}, indent=2)
        )
        return
    result = manifest.get("result", {})
    sha = manifest.get("sha256")
    said = {"cached": "cached", "shipped": "copied from the package", "trained": "trained"}
    typer.echo(f"model: {target} ({said[how]})")
    if sha:
        same = "the shipped base, bit for bit" if sha == shipped.SHA256 else "not the shipped base"
        typer.echo(f"weights: sha256 {sha} ({same})")
    typer.echo(
        f"pretraining: {result.get('steps')} steps in {result.get('seconds')} s "
        f"({result.get('steps_per_second')} steps/s), final loss {result.get('final_loss')}, "
        f"{result.get('parameters')} parameters, seed {seed}, budget {minutes} min"
    )


@world_app.command("logs")
def logs_cmd(
    task: Annotated[str, typer.Option(help="Task family: add, sub or mul.")] = "add",
    n: Annotated[int, typer.Option(min=0, help="How many records.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the records.")] = 0,
    split: Annotated[str, typer.Option(help="Prompts from 'train', 'heldout' or 'all'.")] = "train",
    out: Annotated[Path | None, typer.Option(help="JSONL file to write (default: stdout).")] = None,
) -> None:
    """Write interaction logs of one task family as JSONL, ready for `tutord ingest`."""
    from world.logs import iter_logs, write_jsonl
    from world.split import Split
    from world.tasks import families

    known = families()
    if task not in known:
        typer.echo(f"error: unknown task {task!r}; known: {', '.join(known)}", err=True)
        raise typer.Exit(EXIT_USAGE)
    if split not in ("train", "heldout", "all"):
        typer.echo("error: --split must be train, heldout or all", err=True)
        raise typer.Exit(EXIT_USAGE)
    which: Split | None = None if split == "all" else split  # type: ignore[assignment]
    records = iter_logs(task, n, seed=seed, split=which)
    if out is None:
        write_jsonl(records, sys.stdout)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    count = write_jsonl(records, buffer)
    write_atomic(out, buffer.getvalue())
    typer.echo(f"wrote {count} {task} records to {out}", err=True)
