"""`make_backend`: one call that builds a generation backend by kind from a base model and options.

The backend modules are imported only when chosen, so picking "openai" needs neither vLLM
nor a local model, and importing this module is cheap. Without a kind it picks transformers
on a CPU. It does not read settings (which kind a deployment uses is the daemon's business).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, get_args

from stages.generate.api import GenerationBackend

BackendKind = Literal["transformers", "vllm", "openai"]
KINDS: tuple[str, ...] = get_args(BackendKind)


def default_kind() -> BackendKind:
    """The kind to use when none is configured: vLLM when a CUDA GPU and vLLM are both present,
    else transformers (on a CPU, vLLM brings no speed-up and starts slowly)."""
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    return "transformers"


def make_backend(kind: BackendKind | None, base: str, **options: Any) -> GenerationBackend:
    """A backend for `base` (a model folder or hub id; for "openai", the served model's name).

    `options` go to the backend's constructor: see `TransformersBackend`, `VLLMBackend` and
    `OpenAIBackend` (which needs `base_url`). `kind=None` means `default_kind()`.
    """
    kind = kind or default_kind()
    if kind == "transformers":
        from stages.generate.hf import TransformersBackend

        return TransformersBackend(base, **options)
    if kind == "vllm":
        from stages.generate.vllm_offline import VLLMBackend

        return VLLMBackend(base, **options)
    if kind == "openai":
        from stages.generate.openai_http import OpenAIBackend

        return OpenAIBackend(base, **options)
    raise ValueError(f"unknown backend kind {kind!r}; expected one of {KINDS}")
