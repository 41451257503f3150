"""Generation backends: n completions per chat prompt from a base model plus an optional LoRA.

Three interchangeable implementations of one `GenerationBackend` protocol: transformers
(`hf`, the CPU default, also computes token log-probabilities), vLLM offline
(`vllm_offline`) and an OpenAI-compatible HTTP server (`openai_http`); `make_backend`
picks one. This package does not train, score or store anything, and imports neither vLLM
nor an HTTP library at import time.
"""

from __future__ import annotations

from stages.generate.api import AdapterRef, GenerationBackend, SamplingParams
from stages.generate.factory import BackendKind, make_backend

__all__ = ["AdapterRef", "BackendKind", "GenerationBackend", "SamplingParams", "make_backend"]
