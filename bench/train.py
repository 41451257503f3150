"""Benchmark: a whole tutord training stage, start to published adapter, against bare TRL.

For SFT, DPO and RL (GRPO), on one random-weight Llama with the arith world's tokenizer (the
world's tiny model, or a ~26M-parameter one: hidden 512, 8 layers), a parent LoRA adapter
(r 16 on every projection) published as v1 in an adapter registry, and a training file built
from the world's addition problems, it times two sides, each a fresh subprocess, alternating
(A B, then B A, ...) `--repeats` times:

A. tutord, exactly as a cycle's train step runs it (`daemon/cycle.py`): the stage's config is
   `[train.<stage>]` at its defaults with the per-run fields filled in and `max_steps`
   changed to the workload's, written with `write_config`, then
   `stages.launch.run_stage(stage, config, LaunchConfig(...))` with the daemon's default
   launch settings (one `python -m stages.<stage>` process, one torch thread). Timed from
   before the config is written to `run_stage`'s return: interpreter start, imports, config
   validation, the parent's manifest check, reading and hashing the data, loading base and
   adapter, building the trainer, the reference-policy check, training with the per-step
   monitor (logging, guards), the end-of-run checkpoint, saving the adapter, publishing it
   into the registry as v2 (hashes, fsync, rename), `result.json`, deleting the checkpoint.
B. `bench/bare_trl.py`: a script using torch, datasets, peft, transformers and TRL only,
   with the same model, parent adapter, data, steps, batch, learning rate, seed and stage
   settings (see its docstring). Timed from `subprocess` start to its exit: interpreter
   start, imports, reading the data, loading base and adapter, building the trainer,
   training, `save_pretrained`.

It prints, per stage, the wall seconds and the CPU seconds (user + system, of the process and
its children: steadier when other jobs share the cores) of each side, median and range, the
overhead (A / B - 1 of each adjacent pair of runs, median and range), the seconds inside
`trainer.train()` of each side (from A's `result.json`, B's `--report`) and the largest
difference between the two trained adapters' weights (0 or round-off: both sides did the
same computation); then, per stage, in how many pairs tutord was the slower side, with a
two-sided sign test (3 pairs cannot give p below 0.25: use more `--repeats` to test a
difference). Default workload (tiny): SFT 30 steps, DPO 15, RL 6, at the stage configs'
default batch sizes and learning rates. The RL reward is the world's integer verifier on
both sides (the daemon's default reward dispatches to a task's grader; here both call the
same function). Datasets and base model are built once, before any timing. It checks
nothing about model quality.

With `--base FOLDER` (a real model folder, e.g. SmolLM2-135M-Instruct as `tutord model import
smollm2-135m-instruct` writes it) that folder is the base instead of a random world model: its
own weights, tokenizer and chat template (templates without `{% generation %}` blocks train on
the last turn as a completion, on both sides). The parent adapter (r 16 on every linear layer
but the output head, what tutord's "all-linear" targets) and the training files are built as
above, from the world's addition problems (plain chat messages any chat template renders).
Default workload then: SFT 8 steps, DPO 4, RL 2. `--json FILE` also writes the figures as JSON
(what `bench/real_model.py` reads).

    OMP_NUM_THREADS=1 .venv/bin/python bench/train.py [--stages sft,dpo,rl] [--size tiny|26m]
        [--base FOLDER] [--steps N | --steps sft=N,dpo=N,rl=N] [--repeats 3] [--keep DIR]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
BARE = Path(__file__).resolve().parent / "bare_trl.py"
REWARD = "world.verify:verify_integer"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SIZES = ("tiny", "26m")
STEPS: dict[str, dict[str, int]] = {
    "tiny": {"sft": 30, "dpo": 15, "rl": 6},
    "26m": {"sft": 10, "dpo": 6, "rl": 3},
    "base": {"sft": 8, "dpo": 4, "rl": 2},  # --base: a real model (e.g. 135M parameters)
}


NOTES = (
    "tutord: timed from writing the stage config to stages.launch.run_stage's return, as the "
    "daemon calls it: interpreter start, imports, config validation, parent manifest check, "
    "data read and hashed, base + adapter loaded, trainer built, reference check, training "
    "with per-step logging and guards, end-of-run checkpoint, adapter saved and published into "
    "the registry as v2, result.json, checkpoint deleted.",
    "bare: bench/bare_trl.py, timed from subprocess start to exit: interpreter start, imports, "
    "data read, base + adapter loaded, trainer built, training (TRL's default logging, no "
    "checkpoint), save_pretrained.",
    "Figures: median (min..max) over the runs. overhead: tutord / bare - 1 of each adjacent "
    "pair of runs (its median need not equal the ratio of the medians). CPU s: user + system "
    "seconds of the process and its children (steadier than wall seconds when other jobs share "
    "the cores). in train() s: seconds inside trainer.train() (tutord's include its end-of-run "
    "checkpoint, which the Trainer writes there). max weight diff: the largest difference "
    "between the adapters the two sides trained (0: the same computation).",
)


@dataclass(frozen=True)
class Run:
    wall_s: float
    cpu_s: float
    train_s: float
    adapter: Path


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished, waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- fixtures (built once, untimed) -----------------------------------------------------------


def build_world(
    root: Path, size: str, base_model: Path | None = None
) -> tuple[Path, Path, dict[str, Path], int]:
    """Base model folder, a parent adapter folder (PEFT, not yet in a registry), a training
    file per stage; the parameter count. With `base_model` (a model folder) that folder is
    the base, used in place (read only), instead of a random world model."""
    import torch
    from peft import LoraConfig, get_peft_model

    from world.model import ModelShape, build_model, parameter_count
    from world.tasks import families

    if base_model is None:
        from world.tokenizer import build_tokenizer

        shape = (
            ModelShape()
            if size == "tiny"
            else ModelShape(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1536)
        )
        tokenizer = build_tokenizer()
        model = build_model(tokenizer, seed=0, shape=shape)
        base = root / "base"
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)
        targets: list[str] = TARGETS
    else:
        from transformers import AutoModelForCausalLM

        from stages.policy import linear_module_names

        base = base_model.resolve()
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        targets = sorted(linear_module_names(model))  # what tutord's "all-linear" adapts
    params = parameter_count(model)
    torch.manual_seed(1)
    peft_model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, task_type="CAUSAL_LM")
    )
    with torch.no_grad():  # a production adapter that is not the identity
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    parent = root / "parent"
    peft_model.save_pretrained(parent)
    problems = families()["add"].sample_problems(512, seed=0)
    rows = {
        "sft": [
            {"messages": [*p.messages(), {"role": "assistant", "content": p.answer}], "task": "add"}
            for p in problems
        ],
        "dpo": [
            {
                "prompt": p.messages(),
                "chosen": [{"role": "assistant", "content": p.answer}],
                "rejected": [{"role": "assistant", "content": str(int(p.answer) + 1)}],
                "task": "add",
            }
            for p in problems
        ],
        "rl": [{"prompt": p.messages(), "reference": p.answer, "task": "add"} for p in problems],
    }
    global TOKENS_PER_EXAMPLE
    TOKENS_PER_EXAMPLE = example_tokens(base, rows)
    files = {}
    for stage, data in rows.items():
        files[stage] = root / f"{stage}.jsonl"
        files[stage].write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    return base, parent, files, params


TOKENS_PER_EXAMPLE: dict[str, float] = {}
"""Mean tokens a training example puts through the model, per stage (for MFU on a GPU)."""


def example_tokens(base: Path, rows: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Mean tokens per training example, rendered by the base's chat template: an SFT chat;
    a DPO pair's two sequences (prompt + chosen, prompt + rejected)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)

    def length(messages: list[dict[str, str]]) -> int:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
        return len(ids["input_ids"])

    sft = [length(r["messages"]) for r in rows["sft"]]
    dpo = [
        length(r["prompt"] + r["chosen"]) + length(r["prompt"] + r["rejected"]) for r in rows["dpo"]
    ]
    return {"sft": statistics.fmean(sft), "dpo": statistics.fmean(dpo)}


def fresh_registry(folder: Path, parent: Path, base: Path) -> Path:
    """A registry holding the parent as v1 (the production adapter); returns v1's folder."""
    from stages import registry

    registry.publish(
        parent, folder, version=1, parent=None, base=registry.base_identity(base), stage="bench"
    )
    return registry.adapter_path(folder, 1)


# -- the two sides ----------------------------------------------------------------------------


def stage_settings(stage: str, steps: int) -> Any:
    """The daemon's `[train.<stage>]` at its defaults, with the workload's step count."""
    from daemon.settings import TrainSettings

    configured = getattr(TrainSettings(), stage)
    extra: dict[str, Any] = {"reward_functions": (REWARD,)} if stage == "rl" else {}
    return dataclasses.replace(configured, max_steps=steps, **extra)


def run_tutord(stage: str, steps: int, base: Path, parent: Path, data: Path, work: Path) -> Run:
    """Side A: what `daemon/cycle.py`'s train step does, timed from config to published v2."""
    from daemon.settings import TrainSettings
    from stages import registry
    from stages.launch import LaunchConfig, run_stage
    from stages.stage_io import write_config

    adapters = work / "adapters"
    v1 = fresh_registry(adapters, parent, base)
    t = TrainSettings()
    cpu0, started = children_cpu(), time.perf_counter()
    config = dataclasses.replace(
        stage_settings(stage, steps),
        base_model=str(base),
        parent_adapter=str(v1),
        parent_version=1,
        train_file=str(data),
        output_dir=str(work / "train"),
        adapters_dir=str(adapters),
        version=2,
        seed=0,
        threads=t.threads,
    )
    path = write_config(config, work / "train" / "config.json")
    launch = LaunchConfig(
        nproc=t.nproc,
        launcher=t.launcher,
        accelerate_config=t.accelerate_config,
        timeout_s=t.timeout_s,
        threads=t.threads,
    )
    result = run_stage(stage, path, launch, cwd=REPO)
    wall, cpu = time.perf_counter() - started, children_cpu() - cpu0
    if not result.ok or result.adapter_version != 2:
        raise RuntimeError(f"tutord {stage} failed: {result.reason}; see {work / 'train'}")
    registry.verify(registry.adapter_path(adapters, 2))
    return Run(wall, cpu, result.train_seconds, registry.adapter_path(adapters, 2))


def run_bare(stage: str, steps: int, base: Path, parent: Path, data: Path, work: Path) -> Run:
    """Side B: `bench/bare_trl.py` in a subprocess, timed from its start to its exit."""
    from stages.launch import LaunchConfig, stage_env

    config = stage_settings(stage, steps)
    out = work / "adapter"
    report = work / "report.json"
    command = [
        sys.executable,
        str(BARE),
        "--stage",
        stage,
        "--base",
        str(base),
        "--adapter",
        str(parent),
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch",
        str(config.per_device_batch_size),
        "--lr",
        repr(config.learning_rate),
        "--seed",
        "0",
        "--report",
        str(report),
    ]
    if stage in ("dpo", "rl"):
        command += ["--beta", repr(config.beta)]
    if stage == "dpo":
        command += ["--sft-weight", repr(config.sft_weight)]
    if stage == "rl":
        command += [
            "--num-generations",
            str(config.num_generations),
            "--max-completion-length",
            str(config.max_completion_length),
            "--temperature",
            repr(config.temperature),
            "--reward",
            REWARD,
        ]
    work.mkdir(parents=True, exist_ok=True)
    env = stage_env(LaunchConfig(threads=1))  # the same environment as the stage's
    cpu0, started = children_cpu(), time.perf_counter()
    with (work / "bare.log").open("wb") as log:
        code = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, check=False
        ).returncode
    wall, cpu = time.perf_counter() - started, children_cpu() - cpu0
    if code != 0:
        raise RuntimeError(f"bare {stage} exited {code}; see {work / 'bare.log'}")
    train_s = json.loads(report.read_text(encoding="utf-8"))["train_seconds"]
    return Run(wall, cpu, train_s, out)


def adapter_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two saved adapters' weights."""
    from safetensors.torch import load_file

    wa = load_file(str(a / "adapter_model.safetensors"))
    wb = load_file(str(b / "adapter_model.safetensors"))
    if set(wa) != set(wb):
        return float("inf")
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


# -- main -------------------------------------------------------------------------------------


def parse_steps(text: str | None, size: str, stages: list[str]) -> dict[str, int]:
    """`None` (the size's defaults), `N` (every stage) or `sft=N,dpo=N,rl=N`."""
    steps = dict(STEPS[size])
    if text:
        if text.isdigit():
            steps = {s: int(text) for s in steps}
        else:
            for part in text.split(","):
                name, _, value = part.partition("=")
                steps[name.strip()] = int(value)
    return {s: steps[s] for s in stages}


def sign_test(wins: int, n: int) -> float:
    """Two-sided sign-test p-value of `wins` out of `n` paired comparisons (no ties).

    >>> sign_test(3, 3), sign_test(5, 5), round(sign_test(9, 10), 3)
    (0.25, 0.0625, 0.021)
    """
    low = min(wins, n - wins)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2**n)


def spread(values: list[float], fmt: str, unit: str = "") -> str:
    """`median (min..max)` of `values`, each formatted with `fmt` and `unit`."""
    if len(values) == 1:
        return format(values[0], fmt) + unit
    return (
        f"{format(statistics.median(values), fmt)}{unit} "
        f"({format(min(values), fmt)}..{format(max(values), fmt)}{unit})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default="sft,dpo,rl")
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument(
        "--base",
        type=Path,
        default=None,
        help="a model folder to use as the base instead of a random world model (--size is "
        "then ignored), e.g. H/models/smollm2-135m-instruct from `tutord --home H model import "
        "smollm2-135m-instruct`",
    )
    parser.add_argument("--steps", default=None, help="N, or sft=N,dpo=N,rl=N")
    parser.add_argument("--repeats", "--repeat", dest="repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.base is not None and not (args.base / "config.json").is_file():
        parser.error(f"--base {args.base}: no config.json (not a model folder)")
    steps = parse_steps(args.steps, "base" if args.base else args.size, stages)

    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()

    tmp = None
    if args.keep is None:
        tmp = tempfile.mkdtemp(prefix="tutord-bench-train-")
        root = Path(tmp)
    else:
        root = args.keep
        if root.exists() and any(root.iterdir()):
            parser.error(f"--keep {root}: not empty")
        root.mkdir(parents=True, exist_ok=True)
    try:
        base, parent, files, params = build_world(root, args.size, args.base)
        # Warm the page cache for both sides' imports, untimed.
        subprocess.run(
            [sys.executable, "-c", "import trl, peft, datasets; from trl import GRPOTrainer"],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        model_name = str(base) if args.base else args.size
        where = "every linear layer" if args.base else f"{len(TARGETS)} projections"
        print(
            f"model {model_name}: {params / 1e6:.2f}M parameters, LoRA r 16 on {where} "
            f"continued from a parent adapter; 1 torch thread per process; "
            f"{args.repeats} runs per side, alternating; seconds: median (min..max)"
        )
        rows = []
        signs = []
        figures: dict[str, Any] = {}
        for stage in stages:
            settings = stage_settings(stage, steps[stage])
            runs: dict[str, list[Run]] = {"tutord": [], "bare": []}
            for i in range(args.repeats):
                order = ["tutord", "bare"] if i % 2 == 0 else ["bare", "tutord"]
                for side in order:
                    work = root / f"{stage}-{side}-{i}"
                    fn = run_tutord if side == "tutord" else run_bare
                    runs[side].append(fn(stage, steps[stage], base, parent, files[stage], work))
                print(
                    f"  {stage} run {i + 1}: tutord {runs['tutord'][-1].wall_s:.1f} s "
                    f"(train {runs['tutord'][-1].train_s:.1f}), bare {runs['bare'][-1].wall_s:.1f}"
                    f" s (train {runs['bare'][-1].train_s:.1f})",
                    flush=True,
                )
            a, b = runs["tutord"], runs["bare"]
            wall_over = [(x.wall_s / y.wall_s - 1) * 100 for x, y in zip(a, b, strict=True)]
            cpu_over = [(x.cpu_s / y.cpu_s - 1) * 100 for x, y in zip(a, b, strict=True)]
            diff = max(adapter_difference(x.adapter, y.adapter) for x, y in zip(a, b, strict=True))
            slower = [sum(v > 0 for v in over) for over in (wall_over, cpu_over)]
            n = len(wall_over)
            signs.append(
                f"{stage}: tutord slower in {slower[0]} of {n} pairs by wall seconds "
                f"(sign test p = {sign_test(slower[0], n):.2f}), {slower[1]} of {n} by CPU "
                f"seconds (p = {sign_test(slower[1], n):.2f})"
            )
            figures[stage] = {
                "steps": steps[stage],
                "batch": settings.per_device_batch_size,
                **{
                    f"{side}_{key}": [getattr(r, key) for r in runs[side]]
                    for side in ("tutord", "bare")
                    for key in ("wall_s", "cpu_s", "train_s")
                },
                "max_weight_diff": diff,
                "tokens_per_example": TOKENS_PER_EXAMPLE.get(stage),
            }
            unit = {"sft": "chats", "dpo": "pairs", "rl": "completions"}[stage]
            name = {"sft": "SFT", "dpo": "DPO", "rl": "RL (GRPO)"}[stage]
            rows.append(
                (
                    f"{name}, {steps[stage]} steps x {settings.per_device_batch_size} {unit}",
                    spread([r.wall_s for r in a], ".1f"),
                    spread([r.wall_s for r in b], ".1f"),
                    spread(wall_over, "+.0f", "%"),
                    spread([r.cpu_s for r in a], ".1f"),
                    spread([r.cpu_s for r in b], ".1f"),
                    spread(cpu_over, "+.0f", "%"),
                    spread([r.train_s for r in a], ".1f"),
                    spread([r.train_s for r in b], ".1f"),
                    f"{diff:.0e}" if diff else "0",
                )
            )
        header = (
            "stage",
            "tutord wall s",
            "bare wall s",
            "overhead (wall)",
            "tutord CPU s",
            "bare CPU s",
            "overhead (CPU)",
            "tutord in train() s",
            "bare in train() s",
            "max weight diff",
        )
        print()
        print("| " + " | ".join(header) + " |")
        print("|" + " --- |" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()
        for line in signs:
            print(line)
        print()
        for note in NOTES:
            print(textwrap.fill(note, width=100))
        if args.json is not None:
            record = {
                "model": model_name,
                "parameters": params,
                "repeats": args.repeats,
                "device": "cuda" if torch.cuda.is_available() else "cpu",
            }
            args.json.write_text(json.dumps({**record, "stages": figures}, indent=1) + "\n")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
