"""Can a world base model learn the self-judge's decision? The figure behind the README's
"0.56 without the corpus' comparisons, 0.97 with them".

It makes judge-training examples in the world's verdict format (the compact rubric prompt
-> the task's worked reason, then `Correct. Score: 5` or `Wrong. Score: 0`), half of them on
right answers and half on near misses (off by 1, 2, 3 or 10), from the training split of
every family; trains a LoRA on them with TRL's SFTTrainer (the stages' recipe: rank 16,
all linear layers, lr 3e-3, batch 16, loss on the answer only); then measures, teacher-
forced up to the decision (the comparison's "same" or "different", which Correct/Wrong
then follow), how often the judge decides right on the held-out split; and its greedy
verdicts, parsed as synthesis parses them: the share of right answers it passes and of
wrong ones it fails. It measures; it changes no model and stores nothing.

    .venv/bin/python bench/judge_decision.py --base world/base --examples 1000 --steps 900

Measured on the shipped base (2026-12-04), seed 0: with the verdict "14+18=32 vs 31:
different." greedy verdicts passed 0.87 of right answers and failed 0.18 of wrong ones
after 900 steps (0.98 / 0.02 after 300): the judge copied the result it had just worked
out into the comparison. Quoting the answer's number first ("Said 31. 14+18=32 vs 31:
different.", the world's reason now), 0.94 / 0.98 after 900 steps (0.69 / 0.51 after
300). Its greedy verdicts showed why (2026-12-05): with the question after the answer in
the rubric prompt, the judge quoted the question's numbers ("Said 5." for "A: 5*2=10 /
Q: Calculate 5 times 2."); with the question first it quoted right but wrote another
question's equation, never having copied operands across 64 tokens in pretraining. The
base shipped since (192-token blocks, checked answers in the corpus, the question first):
0.97 / 0.92 after 300 steps. One run takes about 4 minutes on one thread at 300 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

from judges.judge_training import verdict
from judges.llm_judge import COMPACT_POINTWISE_TEMPLATE
from world.pack import arith_tasks
from world.tasks import families

NEAR_MISSES = (-10, -3, -2, -1, 1, 2, 3, 10)


def examples(n: int, split: str, seed: int) -> list[tuple[list[dict[str, str]], bool]]:
    """`n` judge chats (prompt, verdict) with whether the judged answer is right."""
    rng = random.Random(f"judge-decision:{split}:{seed}")
    known = families(None)
    explain = {t.name: t.explain for t in arith_tasks(99)}
    out = []
    for _ in range(n):
        family = known[rng.choice(sorted(known))]
        problem = rng.choice(family.all_problems(split))
        right = rng.random() < 0.5
        answer = int(problem.answer) + (0 if right else rng.choice(NEAR_MISSES))
        response = rng.choice(
            [f"{problem.a}{family.symbol}{problem.b}={answer}", f"The answer is {answer}"]
        )
        reason = explain[family.name](problem.prompt, str(problem.answer), response)  # type: ignore[misc]
        prompt = COMPACT_POINTWISE_TEMPLATE.format(prompt=problem.prompt, response=response)
        chat = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": verdict(right, str(problem.answer), reason)},
        ]
        out.append((chat, right))
    return out


def decision_accuracy(
    model: Any, tokenizer: Any, rows: list[tuple[list[dict[str, str]], bool]]
) -> float:
    """Share of rows where the model, given the verdict up to the point where it decides
    (the comparison's 'same' or 'different'), rates the right word's first token above the
    other's. That is the judge's decision: `Correct`/`Wrong` follow it."""
    import torch

    same_id = tokenizer.convert_tokens_to_ids("s")
    different_id = tokenizer.convert_tokens_to_ids("d")
    hits = 0
    for chat, right in rows:
        text = chat[-1]["content"]
        lead = text[: text.rindex(": same" if right else ": different") + 2]
        partial = [chat[0], {"role": "assistant", "content": lead}]
        ids = tokenizer.apply_chat_template(partial, return_dict=True)["input_ids"][:-1]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        hits += bool(logits[same_id] > logits[different_id]) == right
    return hits / len(rows)


def generated_accuracy(
    model: Any, tokenizer: Any, rows: list[tuple[list[dict[str, str]], bool]]
) -> dict[str, float]:
    """The judge as synthesis uses it: greedy verdicts for the rubric prompts, parsed
    (`parse_score`), against the truth; the share of right answers it passes and of wrong
    answers it fails (an unparseable verdict counts against it)."""
    import torch

    from judges.llm_judge import parse_score

    passed = {True: 0, False: 0}
    total = {True: 0, False: 0}
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    for chat, right in rows:
        ids = tokenizer.apply_chat_template(chat[:1], add_generation_prompt=True, return_dict=True)
        prompt = torch.tensor([ids["input_ids"]])
        with torch.no_grad():
            out = model.generate(
                input_ids=prompt, max_new_tokens=56, do_sample=False, eos_token_id=end
            )
        score = parse_score(tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True))
        total[right] += 1
        passed[right] += score is not None and (score >= 2.5) == right
    return {
        "right_passed": round(passed[True] / max(total[True], 1), 3),
        "wrong_failed": round(passed[False] / max(total[False], 1), 3),
    }


def run(base: Path, n_examples: int, steps: int, seed: int) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    train = examples(n_examples, "train", seed)
    heldout = examples(300, "heldout", seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    with tempfile.TemporaryDirectory(prefix="judge-decision-") as out:
        args = SFTConfig(
            output_dir=out,
            assistant_only_loss=True,
            max_length=model.config.max_position_embeddings,
            max_steps=steps,
            learning_rate=3e-3,
            per_device_train_batch_size=16,
            report_to=[],
            use_cpu=True,
            bf16=False,
            save_strategy="no",
            disable_tqdm=True,
            logging_steps=max(steps, 1),
            seed=seed,
        )
        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        dataset = Dataset.from_list([{"messages": chat} for chat, _ in train])
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
        )
        before = decision_accuracy(trainer.model.eval(), tokenizer, heldout)
        trainer.train()
        model = trainer.model.eval()
        return {
            "base": str(base),
            "examples": n_examples,
            "steps": steps,
            "seed": seed,
            "heldout_before": round(before, 3),
            "train_after": round(decision_accuracy(model, tokenizer, train[:300]), 3),
            "heldout_after": round(decision_accuracy(model, tokenizer, heldout), 3),
            "generated_heldout": generated_accuracy(model, tokenizer, heldout[:200]),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=Path("world/base"))
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(json.dumps(run(args.base, args.examples, args.steps, args.seed)))


if __name__ == "__main__":
    main()
