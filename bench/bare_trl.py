"""A bare TRL script: SFT, DPO or GRPO of a LoRA adapter, what a user writes without tutord.

The comparison side of `bench/train.py`. It uses torch, datasets, peft, transformers and TRL
only (plus, for GRPO, the reward function the workload names, e.g. the arith world's integer
verifier: the same function tutord's RL stage calls). It loads the base model and continues
the given LoRA adapter (trainable), trains `--steps` steps with `SFTTrainer`, `DPOTrainer` or
`GRPOTrainer`, and saves the adapter with `save_pretrained`. The arguments that decide what is
computed match tutord's stage configs (float32, no gradient checkpointing, max_length 1024,
loss on the assistant turn only, linear schedule without warmup, the same seed, beta and
sampling settings, DPO's NLL term on the chosen answers with `--sft-weight`); everything else
is left at TRL's defaults: no checkpoints, logging every 10 steps, no guards, no registry, no
manifest, no result file. With `--report FILE` it writes the seconds spent in
`trainer.train()` (the one thing it times) as JSON.

SFT's loss on the assistant turn: with a chat template that marks it with `{% generation %}`
blocks (the arith world's), TRL's `assistant_only_loss` on the `messages`; with one that does
not (most real models', e.g. SmolLM2's), each chat split into a prompt (every turn but the
last) and a completion (the last turn) and TRL's completion-only loss, as tutord's SFT stage
does.

    python bench/bare_trl.py --stage sft --base BASE --adapter PARENT --data rows.jsonl \
        --out OUT [--steps 30] [--batch 16] [--lr 3e-3] [--report times.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import time

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=["sft", "dpo", "rl"], required=True)
    p.add_argument("--base", required=True, help="base model folder")
    p.add_argument("--adapter", required=True, help="LoRA adapter to continue from")
    p.add_argument("--data", required=True, help="JSONL training file")
    p.add_argument("--out", required=True, help="where the trained adapter is saved")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beta", type=float, default=None, help="DPO / GRPO beta")
    p.add_argument(
        "--sft-weight", type=float, default=0.0, help="DPO: weight of the NLL term (0: none)"
    )
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--reward", default="world.verify:verify_integer", help="module:function")
    p.add_argument("--report", default=None, help="JSON file for the in-train seconds")
    a = p.parse_args()

    with open(a.data, encoding="utf-8") as fh:
        dataset = Dataset.from_list([json.loads(line) for line in fh if line.strip()])
    tokenizer = AutoTokenizer.from_pretrained(a.base)
    # tutord's precision "auto": float32 on CPU, bfloat16 weights and bf16 on a GPU.
    gpu = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        a.base, dtype=torch.bfloat16 if gpu else torch.float32
    )
    model = PeftModel.from_pretrained(model, a.adapter, is_trainable=True)
    common = dict(
        output_dir=f"{a.out}/checkpoints",
        max_steps=a.steps,
        per_device_train_batch_size=a.batch,
        learning_rate=a.lr,
        seed=a.seed,
        save_strategy="no",
        report_to=[],
        bf16=gpu,
        gradient_checkpointing=False,
    )
    # Each stage imports only its own trainer, as a one-stage script would (and as tutord does).
    if a.stage == "sft":
        from trl import SFTConfig, SFTTrainer

        template = tokenizer.chat_template or ""
        if "generation" in template and "endgeneration" in template:
            loss = dict(assistant_only_loss=True)
        else:  # no generation blocks: the last (assistant) turn is the completion
            dataset = dataset.map(
                lambda row: {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]},
                remove_columns=["messages"],
            )
            loss = dict(completion_only_loss=True)
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**common, max_length=1024, packing=False, **loss),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    elif a.stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(
                **common,
                max_length=1024,
                beta=0.1 if a.beta is None else a.beta,
                **(
                    dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, a.sft_weight])
                    if a.sft_weight
                    else {}
                ),
            ),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    else:
        from trl import GRPOConfig, GRPOTrainer

        module, name = a.reward.split(":")
        reward = getattr(importlib.import_module(module), name)
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=GRPOConfig(
                **common,
                num_generations=a.num_generations,
                max_completion_length=a.max_completion_length,
                temperature=a.temperature,
                beta=0.04 if a.beta is None else a.beta,
            ),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    started = time.monotonic()
    trainer.train()
    train_seconds = time.monotonic() - started
    trainer.model.save_pretrained(a.out, selected_adapters=["default"])
    if a.report:
        with open(a.report, "w", encoding="utf-8") as fh:
            json.dump({"train_seconds": train_seconds, "steps": trainer.state.global_step}, fh)


if __name__ == "__main__":
    main()
