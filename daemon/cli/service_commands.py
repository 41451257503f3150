"""`tutord run`: the long-running service (`daemon/service/runner.py`), or with `--once`
every job that is due, then exit (for cron). It only parses arguments and renders results.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from daemon.cli.util import EXIT_REFUSED, fail, guard, out, ready
from daemon.service import logs
from daemon.service.leader import AlreadyRunning
from daemon.service.runner import Service, ServiceError, run_once


def run(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="Run every job that is due, then exit (for cron).")
    ] = False,
) -> None:
    """Run the service: spool folder, cycles, drift snapshots, retention, upkeep and (when
    enabled) the HTTP API, with systemd notify and one leader per database. SIGTERM stops it
    gracefully, SIGHUP reloads tutord.toml."""
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
