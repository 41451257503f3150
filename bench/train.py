"""Benchmark of the training stages: tokens/s of each stage next to a bare TRL script.

For SFT, DPO and RL, builds a random-weight Llama on the arith world's tokenizer (the world's
tiny model, or a ~26M-parameter one: hidden 512, 8 layers), a production adapter for it, and
a training file from the world's addition problems; then runs, alternately and `--repeat`
times, (a) the stage module in this process (`stages.<stage>.run`, continuing from the
adapter, publishing into a registry) and (b) a bare TRL script doing the same work: the same
trainer class, the same arguments, model, adapter and data, written with transformers, peft
and TRL only (the reward function is the world's verifier in both). Tokens/s = tokens the
trainer counted / wall time of `Trainer.train` (the stage reports both in its result), best
run (other processes only ever slow a run down); tokens per CPU-second of this process inside
`Trainer.train`, median run, is the steadier figure when other processes share the cores.
Overhead = bare / stage - 1. Setup and publishing, outside `Trainer.train`, show in the
end-to-end seconds but not in the overhead. One torch thread. It checks nothing about models.

    .venv/bin/python bench/train.py [--stages sft,dpo,rl] [--size tiny|26m] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from stages import dpo, registry, rl, sft
from world.model import ModelShape, build_model, parameter_count
from world.tasks import families
from world.tokenizer import build_tokenizer

SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(),
    "26m": ModelShape(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1536),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REWARD = "world.verify:verify_integer"


@dataclass(frozen=True)
class Workload:
    max_steps: int
    batch: int
    learning_rate: float


WORKLOADS: dict[str, dict[str, Workload]] = {
    "tiny": {
        "sft": Workload(100, 16, 2e-4),
        "dpo": Workload(40, 8, 5e-5),
        "rl": Workload(15, 16, 1e-5),
    },
    "26m": {
        "sft": Workload(20, 16, 2e-4),
        "dpo": Workload(10, 8, 5e-5),
        "rl": Workload(4, 16, 1e-5),
    },
}
RL_GENERATIONS = 8
RL_COMPLETION = 16


# -- fixtures -----------------------------------------------------------------------------------


def build_world(root: Path, size: str) -> tuple[Path, Path, dict[str, Path], int]:
    """Base model folder, a published parent adapter (v1), training files; parameter count."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=0, shape=SHAPES[size])
    base = root / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    params = parameter_count(model)

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    peft_model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM")
    )
    with torch.no_grad():  # a production adapter that is not the identity
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    peft_model.save_pretrained(root / "parent-src")
    adapters = root / "adapters"
    registry.publish(
        root / "parent-src",
        adapters,
        version=1,
        parent=None,
        base=registry.base_identity(base),
        stage="bench",
    )
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
    files = {}
    for stage, data in rows.items():
        files[stage] = root / f"{stage}.jsonl"
        files[stage].write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    return base, registry.adapter_path(adapters, 1), files, params


# -- the stage ----------------------------------------------------------------------------------


def run_stage(
    stage: str, work: Workload, base: Path, parent: Path, data: Path, out: Path
) -> dict[str, float]:
    common: dict[str, Any] = {
        "base_model": str(base),
        "parent_adapter": str(parent),
        "train_file": str(data),
        "output_dir": str(out / "run"),
        "adapters_dir": str(out / "adapters"),
        "version": 2,
        "max_steps": work.max_steps,
        "per_device_batch_size": work.batch,
        "learning_rate": work.learning_rate,
        "save_steps": work.max_steps,
        "threads": 1,
    }
    if stage == "sft":
        result = sft.run(sft.SFTStageConfig(**common))
    elif stage == "dpo":
        result = dpo.run(dpo.DPOStageConfig(**common))
    else:
        result = rl.run(
            rl.RLStageConfig(
                **common,
                num_generations=RL_GENERATIONS,
                max_completion_length=RL_COMPLETION,
                reward_functions=(REWARD,),
            )
        )
    if not result.ok:
        raise RuntimeError(f"{stage} failed: {result.reason}")
    return {
        "tokens": result.tokens_seen,
        "train_s": result.train_seconds,
        "cpu_s": result.train_cpu_seconds,
        "total_s": result.seconds,
        "steps": result.steps,
    }


# -- the bare TRL script ------------------------------------------------------------------------


def run_bare(
    stage: str, work: Workload, base: Path, parent: Path, data: Path, out: Path
) -> dict[str, float]:
    """What a user would write with TRL alone for the same run."""
    started = time.monotonic()
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    from world.verify import verify_integer  # the workload's reward, not stage code

    torch.set_num_threads(1)
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(parent), is_trainable=True)
    args: dict[str, Any] = {
        "output_dir": str(out / "checkpoints"),
        "max_steps": work.max_steps,
        "per_device_train_batch_size": work.batch,
        "gradient_accumulation_steps": 1,
        "learning_rate": work.learning_rate,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "seed": 0,
        "logging_steps": 1,
        "logging_nan_inf_filter": False,
        "save_strategy": "steps",
        "save_steps": work.max_steps,
        "save_total_limit": 2,
        "report_to": [],
        "disable_tqdm": True,
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,
    }
    trainer: Any
    if stage == "sft":
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**args, max_length=1024, assistant_only_loss=True, packing=False),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    elif stage == "dpo":
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(**args, max_length=1024, beta=0.1),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    else:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[verify_integer],
            args=GRPOConfig(
                **args,
                num_generations=RL_GENERATIONS,
                max_completion_length=RL_COMPLETION,
                temperature=1.0,
                beta=0.04,
            ),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    trainer.remove_callback(PrinterCallback)  # no per-step printing in either variant
    t0, cpu0 = time.monotonic(), time.process_time()
    trainer.train()
    train_s, cpu_s = time.monotonic() - t0, time.process_time() - cpu0
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e][-1]
    trainer.model.save_pretrained(str(out / "adapter"), selected_adapters=["default"])
    return {
        "tokens": tokens,
        "train_s": train_s,
        "cpu_s": cpu_s,
        "total_s": time.monotonic() - started,
        "steps": trainer.state.global_step,
    }


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default="sft,dpo,rl")
    parser.add_argument("--size", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="tutord-bench-train-") as tmp:
        root = Path(tmp)
        base, parent, files, params = build_world(root, args.size)
        print(
            f"model {args.size}: {params / 1e6:.2f}M parameters, LoRA r=16 on {len(TARGETS)} "
            f"projections, continuing from a production adapter; 1 torch thread; "
            f"{args.repeat} runs each, alternating"
        )
        header = (
            f"{'stage':5} {'steps':>5} {'batch':>5} | {'tutord tok/s':>12} {'bare tok/s':>10} "
            f"{'overhead':>8} | {'tutord tok/cpu-s':>16} {'bare tok/cpu-s':>14} {'overhead':>8} "
            f"| {'tutord s':>8} {'bare s':>6}"
        )
        print(header)
        print("-" * len(header))
        for stage in args.stages.split(","):
            work = WORKLOADS[args.size][stage]
            ours: list[dict[str, float]] = []
            bare: list[dict[str, float]] = []
            for i in range(args.repeat):
                ours.append(
                    run_stage(stage, work, base, parent, files[stage], root / f"{stage}-s{i}")
                )
                bare.append(
                    run_bare(stage, work, base, parent, files[stage], root / f"{stage}-b{i}")
                )
            wall = [max(r["tokens"] / r["train_s"] for r in runs) for runs in (ours, bare)]
            cpu = [
                statistics.median(r["tokens"] / r["cpu_s"] for r in runs) for runs in (ours, bare)
            ]
            print(
                f"{stage:5} {work.max_steps:>5} {work.batch:>5} | "
                f"{wall[0]:>12.0f} {wall[1]:>10.0f} "
                f"{(wall[1] / wall[0] - 1) * 100:>7.1f}% | {cpu[0]:>16.0f} {cpu[1]:>14.0f} "
                f"{(cpu[1] / cpu[0] - 1) * 100:>7.1f}% | "
                f"{statistics.median(r['total_s'] for r in ours):>8.2f} "
                f"{statistics.median(r['total_s'] for r in bare):>6.2f}"
            )
            tokens = {round(r["tokens"]) for r in ours + bare}
            if stage != "rl" and len(tokens) != 1:
                print(f"      note: token counts differ between runs: {sorted(tokens)}")
    print(
        "tok/s: wall clock, best run; tok/cpu-s: per CPU-second of this process, median run "
        "(steadier when other processes share the cores); overhead = bare / tutord - 1; "
        "s: whole run, median"
    )


if __name__ == "__main__":
    main()
