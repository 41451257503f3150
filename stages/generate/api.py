"""The generation interface: sampling parameters, adapter references and the backend Protocol.

Only typed records and a `typing.Protocol`; no model code lives here. Every backend
(`hf`, `vllm_offline`, `openai_http`) satisfies `GenerationBackend` structurally.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

Message = dict[str, str]
"""One chat message, OpenAI style: {"role": ..., "content": ...}."""

Chat = list[Message]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions.

    temperature: 0 means greedy decoding; > 0 samples from the softmax at that temperature.
    top_p: nucleus sampling mass (1.0 = off); ignored when greedy.
    max_new_tokens: the most tokens generated per completion (the end-of-turn token counts).
    n: completions per prompt; n > 1 needs temperature > 0 (n greedy copies are pointless).
    seed: makes sampling reproducible for the same prompts, parameters and backend; None
        draws fresh randomness.
    ignore_eos: always generate max_new_tokens tokens (benchmarks only): vLLM ignores the
        end-of-turn token, transformers forbids it (`min_new_tokens`), so texts differ.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    n: int = 1
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.n > 1 and self.temperature == 0:
            raise ValueError(f"n={self.n} completions need temperature > 0 (greedy is unique)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class AdapterRef:
    """A PEFT LoRA adapter folder (adapter_config.json + weights) and the name it is served as.

    Every adapter version must have its own name: backends cache adapters by name.
    """

    name: str
    path: Path

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("adapter name must not be empty")
        object.__setattr__(self, "path", Path(self.path))


@runtime_checkable
class GenerationBackend(Protocol):
    """Generates chat completions from a base model, optionally with a LoRA adapter on top."""

    def generate(
        self,
        prompts: list[Chat],
        params: SamplingParams,
        adapter: AdapterRef | None = None,
    ) -> list[list[str]]:
        """`params.n` completions for each prompt, in prompt order.

        The chat template is applied with the assistant turn opened; generation stops at the
        end-of-turn (eos) token; the texts carry no special tokens.
        """
        ...

    def close(self) -> None:
        """Release the model, processes or connections. Idempotent."""
        ...
