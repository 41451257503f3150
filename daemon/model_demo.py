"""`tutord demo --model NAME`: the loop on a pretrained model people bring, from a fresh home.

It imports the model (`daemon/model_store.py`: a named source such as
`smollm2-135m-instruct`, a GGUF file or a model folder), asks the base the shipped general
questions and keeps those it answers right as the RETENTION task (`evals/retention.py`),
all held out and gated like any task. Rehearsal data comes from elsewhere: the base's own
answers to tutord's shipped general prompts (`[replay] rehearsal_prompts = "shipped"`,
`daemon/rehearsal.py`), replayed beside each SFT stage's fresh rows and taught by KL
to the base's distributions (`[train.sft] distill_tasks`, `stages/sft_distill.py`), with
each fresh adapter's `lora_A` fixed where the task's inputs are and the rehearsal rows' are
not (`[train.sft] protect_tasks`, `stages/sft_protect.py`). Then
two tasks arrive one after another, each declared in the home's `tutord.toml` only
(`[tasks.sum2]`, later `[tasks.diff2]`: two-digit sums and differences answered with the
number alone, graded `exact`), with traffic like real traffic before every cycle: mostly
bare answers in the base's own wordy style, some rated, a few corrected. Each cycle
synthesizes (the model judges its own candidates with the compact rubric, its verdict read
from its probabilities of each score), lets the
curriculum choose the stage, trains, gates (task and retention) and promotes or rejects.
With `rehearsal=False` replay and rehearsal are off: the forgetting run. It prints a table
per cycle and writes the drift report. Nothing here names a stage or a decision.
"""

from __future__ import annotations

import json
import operator
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon import migrate
from daemon.config_file import render_tables
from daemon.demo import CycleRow, timed_cycle
from daemon.home import Home
from daemon.model_store import import_model
from daemon.report import write_drift_report
from evals.retention import MAX_NEW_TOKENS
from judges.llm_judge import COMPACT_POINTWISE_TEMPLATE
from replay.db import make_engine
from replay.ingest import ingest_files
from stages.atomic import write_atomic

TASKS: dict[str, tuple[str, Callable[[int, int], int]]] = {
    "sum2": ("What is {a} + {b}?", operator.add),
    "diff2": ("What is {a} - {b}?", operator.sub),
}
PLAN: tuple[str | None, ...] = ("sum2", "diff2")
"""Per cycle: the task declared before it (None: none new); traffic keeps arriving."""
PROMPTS_PER_TASK = 800
HELDOUT_PERCENT = 40
"""Of each task's prompts, held out for the gate: about 320 items, so that a drop of the
0.05 tolerance can be told apart (at 10%, 84 items, the gate could not tell a kept sum2 from
a lost one and refused cycle 2 with "cannot tell")."""
TRAFFIC = {"first": 9000, "later": 300}
"""Logs of a task in the cycle it arrives, and before each later cycle. 9,000 carry about
650 distinct corrected answers: at 3,000 (about 210) cycle 1 learnt sum2 to 0.73-0.79, and
more steps or a higher learning rate did not help; at 6,000 (456), 0.87-0.90."""
MIX = {"bare": 0.7, "rated": 0.2, "corrected": 0.1}

SETTINGS: dict[str, Any] = {
    "model": {"threads": 2},
    # Read from the judge's probabilities of 0-5 after "Score: ": the base never writes a
    # verdict of its own to the rubric (it answers the question inside it), so in "text"
    # mode cycle 1's judge agreement was unknown.
    "judge": {"verdict": "probabilities", "pointwise_template": COMPACT_POINTWISE_TEMPLATE},
    "synth": {
        "prompts": 48,
        "n": 2,
        "max_new_tokens": 12,
        "temperature": 0.8,
        # Every log of the cycle's traffic (9,000 of the new task, 300 of each earlier one).
        "recent_interactions": 10000,
        # No judge-teaching rows: they took a fifth of cycle 1's rows and left the judge's
        # agreement with the grader at chance (0.42-0.70 over earlier runs); the rows go to
        # the tasks. The judge still judges and its agreement is still measured.
        "judge_share": 0.0,
    },
    # Not `rehearsal_share`: at 0.5 (capped at the 269 rehearsal rows: 30% of cycle 2's
    # rows, against 21% as one stratum of the replay) cycle 2 forgot -0.138, not -0.073.
    # Answers cut at 24 tokens, not 48 (cycle 1, seed 0): sum2 0.73 against 0.57, retention
    # 0.955 against 0.952, SFT 313 s against 378. Taught by KL, a rehearsal answer's
    # opening is what holds the base (the candidates lose the first words of answers), and
    # a shorter tail leaves the sums more of each batch's loss and of its time.
    "replay": {"ratio": 0.5, "rehearsal_prompts": "shipped", "rehearsal_max_new_tokens": 24},
    # Every retention item (the base keeps 354 of the 577 shipped questions): with 200,
    # the gate could not see a drop of the 0.05 tolerance and said "cannot tell".
    # And held to the base, not only production: cycle 1's -0.034 and a cycle 2 within the
    # tolerance of cycle 1 would add up past it.
    "gate": {"max_items": 400, "anchor_tasks": ["retention"]},
    "train": {
        "threads": 2,
        "sft": {
            # Rehearsal rows teach the base's distributions, not its greedy text: retention
            # -0.025 against -0.095 by cross-entropy on the same rows (cycle 1, seed 0).
            "distill_tasks": ["rehearsal"],
            # The same batches and loss, 11% faster per step on an AVX-512 CPU (no faster on
            # an AVX2-only one).
            "padding_free": True,
            # The system prompt and the user turn's opening (24 tokens) once per batch, not
            # once per chat: the same loss, 3.2-3.3 s per step against 5.0-5.5 (AMD EPYC).
            "share_prefix": True,
            # lora_A fixed where the task's inputs are and general text's are not (cycle 1,
            # seed 0: sum2 0.79 and retention 0.963, against 0.73 and 0.955 without).
            "protect_tasks": ["rehearsal"],
            # Rank 4, not 16: fewer directions, each held further from general text's
            # (cycle 1, seed 0, the same 456 + 217 rows, 120 steps: rank 16 sum2 0.90 and
            # retention 0.907; rank 8 0.884 and 0.958; rank 4 0.865 and 0.977, and at
            # twice the learning rate 0.868 and 0.980). Rank 4 leaves room for cycle 2,
            # gated against the base too.
            "lora_r": 4,
            "lora_alpha": 8,
            # Autocast to bfloat16: 2.2 s per step against 3.1 in float32 (AMD EPYC).
            "precision": "mixed",
            "max_steps": 120,
            "learning_rate": 0.001,
            "per_device_batch_size": 16,
            "max_seconds": 1200,
        },
        "dpo": {"max_steps": 20, "learning_rate": 0.0002, "per_device_batch_size": 8},
        "rl": {
            "max_steps": 10,
            "learning_rate": 0.0001,
            "num_generations": 4,
            "per_device_batch_size": 8,
            "max_completion_length": 12,
        },
    },
}
RETENTION = {"grader": "contains", "heldout_percent": 100, "max_new_tokens": MAX_NEW_TOKENS}


def task_rows(name: str, seed: int = 0) -> list[dict[str, str]]:
    """The task's prompts file: `PROMPTS_PER_TASK` two-digit questions with references."""
    template, op = TASKS[name]
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100) if op(a, b) >= 0]
    random.Random(f"{name}:{seed}").shuffle(pairs)
    return [
        {"prompt": template.format(a=a, b=b), "reference": str(op(a, b))}
        for a, b in pairs[:PROMPTS_PER_TASK]
    ]


def traffic(name: str, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` logs of a task: the question, an answer in a base model's wordy style (right
    about one time in five), and MIX's share of ratings and corrections."""
    template, op = TASKS[name]
    rng = random.Random(f"traffic:{name}:{seed}")
    sign = "+" if op is operator.add else "-"
    logs = []
    for _ in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        a, b = (max(a, b), min(a, b)) if op is operator.sub else (a, b)
        right = op(a, b)
        said = right if rng.random() < 0.2 else right + rng.choice((-10, -2, -1, 1, 2, 10))
        answer = rng.choice(
            (
                f"{a} {sign} {b} = {said}",
                f"The answer is {said}.",
                f"To work out {a} {sign} {b}, we get {said}.",
            )
        )
        record: dict[str, Any] = {
            "messages": [
                {"role": "user", "content": template.format(a=a, b=b)},
                {"role": "assistant", "content": answer},
            ],
            "task": name,
        }
        draw = rng.random()
        if draw < MIX["corrected"] and said != right:
            record["feedback"] = {"correction": str(right)}
        elif draw < MIX["corrected"] + MIX["rated"]:
            record["feedback"] = {"rating": 1 if said == right else -1}
        logs.append(record)
    return logs


def write_config(home: Home, model: str, tasks: list[str], rehearsal: bool) -> None:
    """The home's `tutord.toml`: the demo's settings and the tasks declared so far."""
    config: dict[str, Any] = json.loads(json.dumps(SETTINGS))
    config["model"]["base"] = model
    if not rehearsal:
        config["replay"]["ratio"] = 0.0
        config["replay"]["rehearsal_prompts"] = ""
        config["train"]["sft"]["protect_tasks"] = []
    declared: dict[str, Any] = {"retention": {**RETENTION, "prompts": "retention.jsonl"}}
    for name in tasks:
        declared[name] = {
            "grader": "exact",
            "answer_format": "regex:\\s*-?[0-9]+\\s*",
            "prompts": f"{name}.jsonl",
            "heldout_percent": HELDOUT_PERCENT,
            "max_new_tokens": 8,
        }
    config["tasks"] = declared
    header = "# Written by `tutord demo --model`: the demo's settings and the tasks so far.\n\n"
    write_atomic(home.config_file, header + render_tables(config))


def _retention_file(home: Home, model_dir: str, say: Callable[[str], None]) -> float:
    from evals.retention import general_questions, known_to, write_prompts
    from stages.generate.factory import make_backend

    backend = make_backend("transformers", model_dir)
    try:
        kept = known_to(backend, general_questions())
    finally:
        backend.close()
    write_prompts(kept.questions, home.root / "retention.jsonl")
    say(
        f"retention suite: the base answers {len(kept.questions)} of {kept.asked} general "
        f"questions right ({kept.share:.0%}); those are kept"
    )
    return kept.share


def run_model_demo(
    root: Path,
    model: str,
    *,
    seed: int = 0,
    rehearsal: bool = True,
    plan: tuple[str | None, ...] = PLAN,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the real-model demo in `root` (a fresh home) on `model` (a named source, a GGUF
    file or a model folder)."""
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    started = time.monotonic()
    home = Home(root)
    if home.root.exists() and any(home.root.iterdir()):
        raise FileExistsError(f"{home.root} is not empty; the demo needs a fresh home")
    home.create()
    engine = make_engine(home.default_database_url())
    migrate.upgrade(engine)
    say(f"importing {model} ...")
    imported = import_model(home, engine, model, say=say)
    base_share = _retention_file(home, imported.path, say)
    rows: list[CycleRow] = []
    declared: list[str] = []
    for i, task in enumerate(plan):
        if task is not None:
            rows_file = home.root / f"{task}.jsonl"
            write_atomic(rows_file, "".join(json.dumps(r) + "\n" for r in task_rows(task)))
            declared.append(task)
            say(f"cycle {i + 1}: [tasks.{task}] declared in tutord.toml")
        write_config(home, imported.name, declared, rehearsal)
        settings = home.settings()
        logs = home.root / f"traffic-{i}.jsonl"
        batch = [(t, TRAFFIC["first"] if t == task else TRAFFIC["later"]) for t in declared]
        records = [r for t, n in batch for r in traffic(t, n, 1000 * seed + 10 * i)]
        write_atomic(logs, "".join(json.dumps(r) + "\n" for r in records))
        report = ingest_files(engine, [logs], source="demo", quarantine_dir=home.quarantine)
        say(f"cycle {i + 1}: {report.ingested} interactions arrived")
        rows.append(timed_cycle(engine, home, settings, task, 1000 * seed + i, say))
    html, _json = write_drift_report(engine, home, home.reports)
    engine.dispose()
    result: dict[str, Any] = {
        "model": imported.name,
        "rehearsal": rehearsal,
        "retention_base_share": round(base_share, 3),
        "cycles": [r.__dict__ for r in rows],
        "report": str(html),
        "seconds": round(time.monotonic() - started, 1),
    }
    say("")
    from daemon.demo import table

    say(table(rows, ("sum2", "diff2", "retention")))
    say(f"drift report: {html}")
    say(f"\ndemo finished in {result['seconds'] / 60:.1f} minutes")
    write_atomic(home.reports / "demo.json", json.dumps(result, indent=1))
    return result
