"""The process a training stage runs in: its rank and world size under torchrun / accelerate,
torch threads, the device's precision, and logging to stderr and `stage.log`.

It does not load models or data and does not train (`stages.policy`, `stages.training_data`,
`stages.stage_run`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from stages.stage_io import ConfigError

STAGE_LOG = "stage.log"


def set_threads(threads: int) -> None:
    """Use `threads` torch threads (intra-op). More threads than free cores make OpenMP spin."""
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def rank() -> int:
    """This process's global rank under torchrun / accelerate (0 when alone)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def use_cpu() -> bool:
    return not torch.cuda.is_available()


def resolve_precision(precision: str) -> tuple[torch.dtype, bool]:
    """(weights dtype, bf16 mixed precision) for "auto" (float32 on CPU, bfloat16 on a GPU),
    "float32", "bfloat16" (the weights too) or "mixed" (float32 weights, every matmul in
    bfloat16 under autocast)."""
    if precision == "auto":
        precision = "float32" if use_cpu() else "bfloat16"
    if precision == "float32":
        return torch.float32, False
    if precision == "bfloat16":
        return torch.bfloat16, True
    if precision == "mixed":
        return torch.float32, True
    raise ConfigError(f"precision must be auto, float32, bfloat16 or mixed, not {precision!r}")


def configure_logging(output_dir: Path) -> None:
    """Log to stderr and, on rank 0, to `output_dir/stage.log` (for `python -m` runs)."""
    fmt = f"%(asctime)s rank{rank()} %(levelname)s %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if rank() == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(output_dir / STAGE_LOG, encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, format=fmt, handlers=handlers, force=True)
    # Progress bars (dataset maps, weight loading) go to stderr and only clutter the logs.
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
