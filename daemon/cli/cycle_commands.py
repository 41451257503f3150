"""`tutord cycle` and `tutord report` from the command line.

Argument parsing and rendering only; the work is in `daemon/cycle.py` and
`daemon/report.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from daemon.cli.util import EXIT_REFUSED, Context, err, fail, guard, out, ready
from daemon.cycle import run_cycle
from daemon.lease import LeaseHeld
from daemon.report import write_drift_report
from daemon.stage_choice import choose_stage

StageChoice = Literal["auto", "sft", "dpo", "rl"]


def cycle(
    ctx: typer.Context,
    stage: Annotated[
        str, typer.Option(help="auto (the curriculum decides), sft, dpo or rl.")
    ] = "auto",
    dry: Annotated[
        bool, typer.Option("--dry-run", help="Say what the curriculum would pick; run nothing.")
    ] = False,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the cycle's number).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run one improvement cycle (or resume an interrupted one): synthesize, assemble, train,
    gate, promote or reject, report."""
    if stage not in ("auto", "sft", "dpo", "rl"):
        fail("--stage must be auto, sft, dpo or rl")
    c = ready(ctx)
    if dry:
        decision = guard(lambda: choose_stage(c.engine, c.home, c.settings, stage))
        out.print(f"next stage: {decision.stage or 'none'}: {decision.reason}")
        return
    say = (lambda text: None) if as_json else (lambda text: out.print(text))
    try:
        summary = guard(
            lambda: run_cycle(c.engine, c.home, c.settings, stage=stage, seed=seed, say=say)
        )
    except LeaseHeld as exc:
        fail(f"another cycle is running: {exc}", EXIT_REFUSED)
    if as_json:
        out.print_json(json.dumps(summary.to_dict()))
    else:
        out.print(
            f"cycle {summary.cycle_id} {summary.state}: {summary.outcome or ''} "
            f"{summary.candidate or ''} ({summary.outcome_reason or summary.decision_reason})"
        )
    if summary.state == "failed":
        err.print(f"cycle {summary.cycle_id} failed: {summary.outcome_reason}")
        raise typer.Exit(EXIT_REFUSED)


def report(
    ctx: typer.Context,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder (default: <home>/reports).")
    ] = None,
) -> None:
    """Write the drift report (report.html, self-contained, and report.json)."""
    c = ready(ctx)
    target = out_dir or c.home.reports
    html, data = guard(lambda: write_drift_report(c.engine, c.home, target))
    out.print(f"wrote {html} and {data}")
    summary = json.loads(data.read_text()).get("summary")
    if summary:
        out.print(summary)


def demo(
    ctx: typer.Context,
    ablation: Annotated[
        bool,
        typer.Option(help="Also run the no-replay ablation (a second home beside; as long again)."),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            help="Run the real-model demo on this model instead of the world: a known name "
            "(smollm2-135m-instruct), a GGUF file or a model folder.",
            show_default=False,
        ),
    ] = None,
    rehearsal: Annotated[
        bool,
        typer.Option(
            help="With --model: replay and retention rehearsal (off: the forgetting run)."
        ),
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the traffic and the cycles.")] = 0,
) -> None:
    """Run the whole pipeline in a fresh home: on the embedded world (the shipped base model,
    cycles through SFT, DPO and RL as task families arrive, gate, report; with --ablation,
    the same cycles without replay), or with --model on a pretrained model you bring (two
    tasks arrive while a retention suite guards what it knew)."""
    c: Context = ctx.obj

    def say(text: str) -> None:
        out.print(text, markup=False)  # the demos print [tables] and [brackets] as they are

    if model is not None:
        from daemon.model_demo import run_model_demo
        from stages.model_import import ModelImportError

        try:
            guard(
                lambda: run_model_demo(c.home.root, model, seed=seed, rehearsal=rehearsal, say=say)
            )
        except ModelImportError as exc:
            fail(str(exc))
        return
    from daemon.demo import run_demo

    guard(lambda: run_demo(c.home.root, ablation=ablation, seed=seed, say=say))
