"""`tutord run`: the long-running service (`daemon/service/runner.py`), or with `--once`
every job that is due, then exit (for cron); and `tutord service install`, which writes the
systemd unit (`daemon/service/unit.py`) and prints what to run next. It only parses
arguments and renders results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from daemon.cli.util import EXIT_REFUSED, fail, guard, out, ready
from daemon.home import HOME_ENV, Home
from daemon.service import logs
from daemon.service.leader import AlreadyRunning
from daemon.service.runner import Service, ServiceError, run_once
from daemon.service.unit import (
    CHECKOUT,
    DEFAULT_HOME,
    DEFAULT_UNIT_DIR,
    DEFAULT_USER,
    UnitChoice,
    UnitError,
    UnitExists,
    install_unit,
    next_steps,
    render_unit,
    shipped_unit,
)

service_app = typer.Typer(no_args_is_help=True, help="tutord as a systemd service.")


def run(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="Run every job that is due, then exit (for cron).")
    ] = False,
) -> None:
    """Run the service: spool folder, synthesis, cycles, drift snapshots, retention, upkeep
    and (when enabled) the HTTP API, with systemd notify and one leader per database.
    SIGTERM stops it gracefully, SIGHUP reloads tutord.toml."""
    c = ready(ctx)
    logs.configure(c.settings.service.log_format)
    try:
        if once:
            outcomes = guard(lambda: run_once(c.engine, c.home, c.settings))
            out.print_json(json.dumps(outcomes))
            if "error" in outcomes.values():
                raise typer.Exit(EXIT_REFUSED)
            return
        service = Service(c.engine, c.home, c.home.settings)
        code = guard(service.run)
    except AlreadyRunning as exc:
        fail(str(exc), EXIT_REFUSED)
    except ServiceError as exc:
        fail(str(exc))
    raise typer.Exit(code)


def service_home(ctx: typer.Context) -> Path:
    """The service's home: `--home` or `$TUTORD_HOME` when given, else /var/lib/tutord
    (not the personal default home of whoever runs the command)."""
    given = ctx.find_root().params.get("home")
    if given is None and not os.environ.get(HOME_ENV):
        return DEFAULT_HOME
    home: Home = ctx.obj.home
    return home.root


@service_app.command("install")
def install(
    ctx: typer.Context,
    unit_dir: Annotated[
        Path, typer.Option(help="Folder to write tutord.service into.")
    ] = DEFAULT_UNIT_DIR,
    user: Annotated[str, typer.Option(help="Account the service runs as.")] = DEFAULT_USER,
    group: Annotated[str | None, typer.Option(help="Its group (default: the user's).")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a different tutord.service there.")
    ] = False,
) -> None:
    """Write the systemd unit for this tutord (packaging/tutord.service, with this
    environment's tutord, the home of --home or /var/lib/tutord, and --user) into
    --unit-dir, then print the commands to run next. It runs no systemctl itself."""
    choice = UnitChoice(home=service_home(ctx), user=user, group=group or "")
    readme = CHECKOUT / "README.md"
    try:
        text = render_unit(shipped_unit(), choice, readme if readme.is_file() else None)
        installed = install_unit(text, unit_dir, force=force)
    except UnitExists as exc:
        fail(escape(str(exc)), EXIT_REFUSED)
    except UnitError as exc:
        fail(escape(str(exc)))
    what = "wrote" if installed.changed else "unchanged (already installed)"
    out.print(f"{what} {installed.path}", markup=False)
    out.print(f"  runs {choice.executable} --home {choice.home} run as {choice.user}", markup=False)
    out.print("then run:")
    for step in next_steps(choice, unit_dir):
        out.print(f"  {step}", markup=False)
