"""`tutord adapters list|show|prune` and `tutord rollback`: the adapter registry from the CLI.

Rendering and argument parsing only; the work is in `daemon/adapters.py` (database),
`daemon/adapter_serving.py` (the model server, before a rollback moves production) and
`stages/registry.py` (folders).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import typer

from daemon import adapters
from daemon.adapter_serving import rollback_served
from daemon.cli.util import Context, fail, guard, out, ready
from replay.db import session_scope
from stages import registry

adapters_app = typer.Typer(
    no_args_is_help=True, help="Adapter versions and the production pointer."
)


def _parse_target(value: str) -> int | None:
    if value.strip().lower() == "base":
        return None
    try:
        return registry.parse_version(value)
    except registry.RegistryError as exc:
        fail(str(exc))


@adapters_app.command("list")
def list_adapters(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Every adapter version, its stage, parent, status; `*` marks production."""
    c = ready(ctx)

    def run() -> tuple[int | None, list[dict[str, object]]]:
        with session_scope(c.engine) as session:
            prod = adapters.production(session)
            rows = [
                {
                    "version": r.name,
                    "parent": adapters.label(r.parent) if r.parent else "base",
                    "stage": r.stage,
                    "status": r.status,
                    "reason": r.status_reason,
                    "created_at": r.created_at.isoformat(timespec="seconds"),
                    "production": r.version == prod,
                }
                for r in adapters.list_versions(session)
            ]
        return prod, rows

    prod, rows = guard(run)
    if as_json:
        out.print_json(json.dumps({"production": adapters.label(prod), "versions": rows}))
        return
    out.print(f"production: {adapters.label(prod)}")
    for r in rows:
        mark = "*" if r["production"] else " "
        reason = f"  ({r['reason']})" if r["reason"] else ""
        out.print(
            f"{mark} {r['version']:<6} parent {r['parent']:<6} {r['stage']:<8} "
            f"{r['status']:<10} {r['created_at']}{reason}"
        )


@adapters_app.command("show")
def show(ctx: typer.Context, version: Annotated[str, typer.Argument(help="e.g. v3")]) -> None:
    """The manifest of one version, after verifying its files."""
    c: Context = ready(ctx)
    number = _parse_target(version)
    if number is None:
        fail("the base model has no manifest")
    manifest = guard(lambda: registry.verify(registry.adapter_path(c.home.adapters, number)))
    out.print_json(manifest.model_dump_json())


@adapters_app.command("prune")
def prune(
    ctx: typer.Context,
    keep: Annotated[
        int | None, typer.Option(help="Versions to keep (default: adapters.keep_last).")
    ] = None,
) -> None:
    """Delete old adapter folders; production and its ancestors are always kept."""
    c = ready(ctx)
    keep_last = c.settings.adapters.keep_last if keep is None else keep
    if keep_last < 0:
        fail("--keep must be >= 0")
    deleted = guard(lambda: adapters.prune(c.engine, c.home.adapters, keep_last))
    out.print(f"deleted {', '.join(adapters.label(v) for v in deleted) or 'nothing'}")


def rollback(
    ctx: typer.Context,
    to: Annotated[
        str | None,
        typer.Option(
            help="Version to roll back to (v3, 3, or base); default: the previous production."
        ),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why, for the history.")] = None,
    actor: Annotated[str, typer.Option(help="Who, for the history.")] = "cli",
) -> None:
    """Move production back in one step: to the previous production, or to --to. With a
    model server (model.server_url), it first loads the target and must answer with it;
    otherwise production stays (exit 1)."""
    c = ready(ctx)
    target: int | Literal["previous"] | None = "previous" if to is None else _parse_target(to)
    move = guard(
        lambda: rollback_served(
            c.engine,
            c.home,
            c.settings,
            to=target,
            actor=actor,
            reason=reason,
        )
    )
    out.print(
        f"production: {adapters.label(move.from_version)} -> {adapters.label(move.to_version)}"
    )
