"""tutord's command line (`tutord ...`), built with typer.

Commands here: `init`, `ingest`, `status`, `db upgrade`, `db current`; the others are
registered from `daemon.cli.world_commands`, `.synth_command`, `.cycle_commands`,
`.adapter_commands` and `.service_commands` (`tutord run`, `tutord service install`).
Each command resolves the home folder, loads settings and calls into the packages that do
the work; these modules only parse arguments and render results.

Exit codes: 0 success; 1 a refused operation; 2 unusable arguments or setup (missing
file, bad home, bad configuration, database behind its migrations); 3 some input lines
were rejected.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from sqlalchemy import select
from sqlalchemy.orm import Session

from daemon import adapters, migrate
from daemon.cli.adapter_commands import adapters_app, rollback
from daemon.cli.cycle_commands import cycle, demo, report
from daemon.cli.model_commands import model_app
from daemon.cli.service_commands import run, service_app
from daemon.cli.synth_command import synth
from daemon.cli.util import EXIT_REJECTED, Context, err, fail, guard, out, ready
from daemon.cli.world_commands import world_app
from daemon.home import resolve_home
from daemon.models import Cycle, GateDecision
from daemon.production_check import production_refusal
from replay.db import session_scope
from replay.ingest import IngestReport, file_problem, ingest_files
from replay.stats import data_counts

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="tutord: a continual self-improvement daemon for language models.",
)
db_app = typer.Typer(no_args_is_help=True, help="Database migrations.")
app.add_typer(db_app, name="db")


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="Home folder (default: $TUTORD_HOME, else ~/.local/share/tutord).",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        _quiet_libraries()
    ctx.obj = Context(guard(lambda: resolve_home(home)))


def _quiet_libraries() -> None:
    """No progress bars or advice from transformers on a plain run (`-v` keeps them). Set
    through the environment, read when transformers loads, so that commands which never
    load it (ingest, status, ...) do not pay for importing it here."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@app.command()
def init(ctx: typer.Context) -> None:
    """Create the home folder (config, folders) and migrate its database to the newest schema."""
    c: Context = ctx.obj

    def run() -> None:
        created = c.home.create()
        migrate.upgrade(c.engine)
        out.print(f"home      {c.home.root}{'  (new config written)' if created else ''}")
        out.print(f"database  {c.engine.url.render_as_string(hide_password=True)}")
        out.print(f"revision  {migrate.current_revision(c.engine)}")

    guard(run)


def _progress_factory(progress: Progress) -> Callable[[Path, int], Callable[[int], None]]:
    def on_file(path: Path, size: int) -> Callable[[int], None]:
        task = progress.add_task(escape(path.name), total=size)  # a name is not markup
        return lambda done: progress.update(task, completed=done)

    return on_file


def _print_report(report: IngestReport) -> None:
    out.print(
        f"read {report.read}  ingested {report.ingested} "
        f"({report.ingested_interactions} interactions, {report.ingested_pairs} pairs)  "
        f"duplicates {report.duplicates}  rejected {report.rejected}"
    )
    # Paths and messages are printed as they are: `[...]` in a file name is not markup.
    for e in report.errors:
        err.print(f"  rejected {e}", markup=False)
    if report.rejected > len(report.errors):
        err.print(f"  ... and {report.rejected - len(report.errors)} more")
    for q in report.quarantine_files:
        err.print(f"  rejected lines copied to {q}", markup=False)
    for problem in report.quarantine_errors:
        err.print(f"  warning: {problem}", markup=False)


@app.command()
def ingest(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="JSONL files (.jsonl or .jsonl.gz).")],
    source: Annotated[
        str | None, typer.Option(help="Source name; record ids are unique within a source.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Ingest interaction logs. Bad lines are reported and quarantined; good ones are kept.

    Exit status: 0 all lines ingested (or duplicates), 3 some lines rejected (or a file
    damaged part way), 2 bad arguments (a missing file, a folder, a FIFO, ...).
    """
    for f in files:
        problem = file_problem(f)
        if problem is not None:
            fail(f"{escape(str(f))}: {problem}")
    c = ready(ctx)
    settings = c.settings
    src = source or settings.ingest.default_source
    if not 0 < len(src) <= 200:
        fail("--source must be 1 to 200 characters")

    def run(on_file: Callable[[Path, int], Callable[[int], None]] | None) -> IngestReport:
        return ingest_files(
            c.engine,
            files,
            source=src,
            quarantine_dir=c.home.quarantine,
            max_line_bytes=settings.ingest.max_line_bytes,
            batch_size=settings.ingest.batch_size,
            on_file=on_file,
        )

    if sys.stderr.isatty() and not as_json:
        columns = ("{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err, transient=True) as progress:
            report = guard(lambda: run(_progress_factory(progress)))
    else:
        report = guard(lambda: run(None))
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        _print_report(report)
    if report.rejected:
        raise typer.Exit(EXIT_REJECTED)


def _detectable(session: Session, cycle_id: int) -> dict[str, float]:
    """The smallest drop per task the cycle's gate could detect (empty: no gate yet)."""
    gate = session.execute(select(GateDecision).where(GateDecision.cycle_id == cycle_id)).scalar()
    tasks = gate.tasks if gate else {}
    return {t: v["detectable_drop"] for t, v in tasks.items() if "detectable_drop" in v}


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """What the database holds: interactions (by task and source), pairs, samples, replay items;
    production (verified: a refused one is shown with what to run) and the last cycles."""
    c = ready(ctx)
    counts = guard(lambda: data_counts(c.engine))
    with session_scope(c.engine) as session:
        prod = adapters.production(session)
        cycles = [
            {
                "id": row.id,
                "state": row.state,
                "stage": row.stage,
                "candidate": None if row.candidate_version is None else f"v{row.candidate_version}",
                "outcome": row.outcome,
                "reason": row.outcome_reason or row.decision_reason,
                "seconds": round(sum((row.step_timings or {}).values()), 1),
                "detectable_drop": _detectable(session, row.id),
            }
            for row in session.execute(select(Cycle).order_by(Cycle.id.desc()).limit(5)).scalars()
        ]
    refusal = guard(lambda: production_refusal(c.engine, c.home.adapters))
    info = {
        "home": str(c.home.root),
        "production": adapters.label(prod),
        "production_refused": refusal.message() if refusal else None,
        "database": c.engine.url.render_as_string(hide_password=True),
        "revision": migrate.current_revision(c.engine),
        "data": counts.to_dict(),
        "cycles": cycles,
    }
    if as_json:
        out.print_json(json.dumps(info))
        return
    out.print(f"home      {info['home']}")
    out.print(f"database  {info['database']} (revision {info['revision']})")
    out.print(f"production adapter  {info['production']}")
    if refusal:
        out.print(f"  REFUSED: {refusal.message()}", markup=False)
    for cy in cycles:
        out.print(
            f"  cycle {cy['id']:<4} {cy['state']:<10} {cy['stage'] or '-':<4} "
            f"{cy['candidate'] or '-':<5} {cy['outcome'] or '':<9} {cy['seconds']:>7} s  "
            f"{(cy['reason'] or '')[:90]}"
        )
        if cy["detectable_drop"]:
            drops = ", ".join(f"{t} {d:.3f}" for t, d in cy["detectable_drop"].items())
            out.print(f"             gate could see drops of at least: {drops}")
    out.print(
        f"interactions  {counts.interactions} ({counts.interactions_with_feedback} with feedback)"
    )
    for task, n in counts.interactions_by_task.items():
        out.print(f"  task {task:<24} {n}")
    for src, n in counts.interactions_by_source.items():
        out.print(f"  source {src:<22} {n}")
    out.print(f"preference pairs  {counts.pairs}")
    for origin, n in counts.pairs_by_origin.items():
        out.print(f"  origin {origin:<22} {n}")
    out.print(f"SFT examples  {counts.sft_examples}")
    for origin, n in counts.sft_by_origin.items():
        out.print(f"  origin {origin:<22} {n}")
    out.print(
        f"samples  {counts.samples}   judgments  {counts.judgments}   "
        f"synthesis runs  {counts.synth_runs}"
    )
    out.print(f"replay items  {counts.replay_items}")
    for kind, tasks in counts.replay_by_kind_task.items():
        for task, n in tasks.items():
            out.print(f"  {kind}/{task:<24} {n}")


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Migrate the database to REVISION (default: the newest)."""
    c: Context = ctx.obj

    def run() -> None:
        c.home.require_initialized()
        before = migrate.current_revision(c.engine)
        migrate.upgrade(c.engine, revision)
        after = migrate.current_revision(c.engine)
        out.print(f"{before or 'none'} -> {after or 'none'}")

    guard(run)


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Print the database's revision and the newest one this tutord knows."""
    c: Context = ctx.obj

    def run() -> None:
        c.home.require_initialized()
        current = migrate.current_revision(c.engine)
        head = migrate.head_revision()
        state = "up to date" if current == head else "behind: run `tutord db upgrade`"
        out.print(f"current {current or 'none'}  head {head}  ({state})")

    guard(run)


app.add_typer(adapters_app, name="adapters")
app.add_typer(model_app, name="model")
app.add_typer(world_app, name="world")
app.add_typer(service_app, name="service")
app.command()(synth)
app.command()(cycle)
app.command()(report)
app.command()(demo)
app.command()(rollback)
app.command()(run)
