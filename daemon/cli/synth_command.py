"""`tutord synth`: one self-rewarded synthesis run from the command line.

Argument parsing and rendering only; the work is in `daemon/synth_run.py`.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from daemon.cli.util import err, guard, out, ready
from daemon.synth_run import SynthSummary, run_synth


def _print(summary: SynthSummary) -> None:
    h = summary.health
    origins = ", ".join(f"{n} {o}" for o, n in sorted(summary.prompts_by_origin.items())) or "none"
    out.print(f"synthesis run {summary.run_id} with policy {summary.adapter}")
    out.print(f"  prompts     {sum(summary.prompts_by_origin.values())} ({origins})")
    out.print(f"  candidates  {summary.candidates}")
    out.print(f"  SFT examples new {summary.sft_new} (+{summary.feedback_sft_new} from feedback)")
    out.print(
        f"  pairs       new {summary.pairs_new} (+{summary.feedback_pairs_new} from feedback), "
        f"ties dropped {summary.ties_dropped}"
    )
    agreement = (
        "n/a" if h["agreement"] is None else f"{h['agreement']:.0%} of {h['agreement_rows']}"
    )
    if h.get("balanced") is not None:
        agreement += f" (balanced {h['balanced']:.0%})"
    length_r = "n/a" if h["length_correlation"] is None else f"{h['length_correlation']:+.2f}"
    out.print(
        f"  judge       agreement with verifiers {agreement}, length correlation {length_r}, "
        f"abstentions {h['abstention_rate']:.0%} of {h['judged']}"
    )
    if not h["ok"]:
        err.print(f"[bold yellow]warning:[/] {h['message']}", markup=True)


def synth(
    ctx: typer.Context,
    prompts: Annotated[
        int | None, typer.Option(min=1, help="Prompts (default: synth.prompts).")
    ] = None,
    n: Annotated[
        int | None, typer.Option(min=2, help="Candidates per prompt (default: synth.n).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of prompt choice and sampling.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Generate K candidates per prompt with the production policy, score them with verifiers
    and the judge, and store samples, judgments, SFT examples and preference pairs."""
    c = ready(ctx)
    summary = guard(
        lambda: run_synth(c.engine, c.home, c.settings, prompts=prompts, n=n, seed=seed)
    )
    if as_json:
        out.print_json(json.dumps(summary.to_dict()))
    else:
        _print(summary)
