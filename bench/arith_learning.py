"""Benchmark: how much SFT, then RL, teach the bootstrapped arith world model.

Bootstraps the world's base model (a fixed number of steps), builds SFT data the way
tutord does from world logs (feedback: corrections and liked answers), trains the SFT
stage, then the RL (GRPO) stage on top with the world's verifier as reward, and prints
greedy exact match on held-out prompts of each family after each step. It runs the real
stage modules through `stages.launch.run_stage`, as `tutord cycle` does.

    OMP_NUM_THREADS=1 .venv/bin/python bench/arith_learning.py --work /tmp/arith-bench
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from judges.feedback import FeedbackItem, feedback_data
from stages.generate.api import AdapterRef, SamplingParams
from stages.generate.hf import TransformersBackend
from stages.launch import LaunchConfig, run_stage
from world.logs import generate_logs
from world.pretrain import bootstrap
from world.tasks import families
from world.verify import verify_integer


def accuracy(base: Path, adapter: Path | None) -> dict[str, float]:
    backend = TransformersBackend(str(base))
    ref = AdapterRef("bench", adapter) if adapter else None
    out = {}
    try:
        for name in ("add", "sub", "mul"):
            problems = families()[name].all_problems("heldout")[:200]
            texts = backend.generate(
                [p.messages() for p in problems], SamplingParams(max_new_tokens=16), ref
            )
            scores = verify_integer(
                [p.prompt for p in problems],
                [t[0] for t in texts],
                reference=[p.answer for p in problems],
            )
            out[name] = round(sum(s or 0.0 for s in scores) / len(scores), 3)
    finally:
        backend.close()
    return out


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument(
        "--bootstrap-steps", type=int, default=None, help="Default: the shipped base model."
    )
    parser.add_argument("--logs", type=int, default=2000)
    parser.add_argument("--sft-steps", type=int, default=600)
    parser.add_argument("--rl-steps", type=int, default=80)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base"
    t = time.monotonic()
    if args.bootstrap_steps is None:
        bootstrap(base, threads=1)
    else:
        bootstrap(base, max_steps=args.bootstrap_steps, seed=0, threads=1)
    print(f"bootstrap: {args.bootstrap_steps or 'shipped'} ({time.monotonic() - t:.0f} s)")
    print(f"base          {accuracy(base, None)}")

    items = []
    for rec in generate_logs("add", args.logs, seed=11):
        fb = rec.get("feedback") or {}
        items.append(
            FeedbackItem(
                rec["messages"][:-1],
                rec["messages"][-1]["content"],
                fb.get("rating"),
                fb.get("correction"),
                rec.get("task"),
            )
        )
    sft, _ = feedback_data(items)
    write_jsonl(
        work / "sft.jsonl",
        [
            {
                "messages": [*e.prompt, {"role": "assistant", "content": e.completion}],
                "task": e.task,
            }
            for e in sft
        ],
    )
    sft_config = {
        "base_model": str(base),
        "train_file": str(work / "sft.jsonl"),
        "output_dir": str(work / "sft"),
        "max_steps": args.sft_steps,
        "learning_rate": 0.003,
        "per_device_batch_size": 16,
        "lora_r": 16,
        "lora_alpha": 32,
        "threads": 1,
    }
    (work / "sft.json").write_text(json.dumps(sft_config))
    result = run_stage("sft", work / "sft.json", LaunchConfig(threads=1))
    print(
        f"+ SFT         {accuracy(base, Path(result.adapter_path))}  "
        f"({len(sft)} examples from {args.logs} add logs, {result.steps} steps, "
        f"{result.seconds:.0f} s)"
    )

    prompts = families()["add"].sample_problems(400, seed=5, split="train")
    write_jsonl(
        work / "rl.jsonl",
        [{"prompt": p.messages(), "reference": p.answer, "task": "add"} for p in prompts],
    )
    rl_config = {
        "base_model": str(base),
        "parent_adapter": result.adapter_path,
        "train_file": str(work / "rl.jsonl"),
        "output_dir": str(work / "rl"),
        "max_steps": args.rl_steps,
        "learning_rate": 0.0002,
        "per_device_batch_size": 32,
        "num_generations": 8,
        "beta": 0.04,
        "max_completion_length": 16,
        "temperature": 0.7,
        "threads": 1,
    }
    (work / "rl.json").write_text(json.dumps(rl_config))
    rl = run_stage("rl", work / "rl.json", LaunchConfig(threads=1))
    print(
        f"+ RL on top   {accuracy(base, Path(rl.adapter_path))}  "
        f"({rl.steps} steps, {rl.seconds:.0f} s, {rl.zero_variance_prompts} prompts without "
        "reward variance)"
    )


if __name__ == "__main__":
    main()
