"""The transformers generation backend: a base model + cached PEFT LoRA adapters on one device.

`TransformersBackend.generate` left-pads each batch of rendered chat prompts and calls
`model.generate`; `token_logprobs` scores given completions under the policy in one forward
pass per batch (what RL and divergence measurements need), and `option_logprobs` the
options after a prefilled answer prefix (the judge's "Score: N" read as probabilities).
Adapters are loaded with `peft.PeftModel.from_pretrained` / `load_adapter` once and kept by
name; the base alone is used with the adapters disabled. It is the default on CPU; it does
not shard a model across devices, serve HTTP or train.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from stages import registry
from stages.generate.api import AdapterRef, Chat, SamplingParams
from stages.generate.chat import (
    decode_completion,
    encode_completions,
    encode_prompts,
    stop_token_ids,
)

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """`None`/"auto": float32 on CPU, bfloat16 on an accelerator."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if device == "cpu" else torch.bfloat16
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'"
        ) from None


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids` and `attention_mask` of `rows` padded on the left to the longest."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids` and `attention_mask` of `rows` padded on the right to the longest."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for the block and restore the caller's RNG state afterwards."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class TransformersBackend:
    """A `GenerationBackend` on transformers + PEFT; also scores completions (`token_logprobs`).

    base: a local folder or hub id holding the model and its tokenizer (with chat template).
    device: "cpu", "cuda", "cuda:1"...; default cuda when available.
    dtype: "float32", "bfloat16", "float16" or "auto" (float32 on CPU, bfloat16 otherwise).
    batch_size: prompts per `generate` call / sequences per scoring forward pass.
    """

    def __init__(
        self,
        base: str | Path,
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = "auto",
        batch_size: int = 64,
        trust_remote_code: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.base = str(base)
        self.device = torch.device(device or default_device())
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.base, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            self.base,
            dtype=resolve_dtype(dtype, self.device.type),
            trust_remote_code=trust_remote_code,
        )
        self._base_model: Any = model.to(self.device).eval()
        self._peft: Any = None  # a peft.PeftModel around the base once an adapter is loaded
        self._adapters: dict[str, Path] = {}
        self.stop_ids = stop_token_ids(self.tokenizer, model.generation_config)
        self.end_id = self.stop_ids[0]
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.end_id
        log.info("transformers backend: %s on %s (%s)", self.base, self.device, model.dtype)

    # -- adapters ---------------------------------------------------------------------------

    @property
    def adapters(self) -> dict[str, Path]:
        """Loaded adapters: name -> folder."""
        return dict(self._adapters)

    def load_adapter(self, adapter: AdapterRef) -> None:
        """Load `adapter` once; a name already loaded from another folder is an error."""
        known = self._adapters.get(adapter.name)
        if known is not None:
            if known != adapter.path:
                raise ValueError(
                    f"adapter name {adapter.name!r} is already loaded from {known}, not "
                    f"{adapter.path}: give every adapter version its own name"
                )
            return
        if not (adapter.path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no PEFT adapter (adapter_config.json) in {adapter.path}")
        registry.check_weights(adapter.path)  # safetensors only: never a pickle
        from peft import PeftModel

        if self._peft is None:
            self._peft = PeftModel.from_pretrained(
                self._base_model, str(adapter.path), adapter_name=adapter.name, is_trainable=False
            )
        else:
            self._peft.load_adapter(
                str(adapter.path), adapter_name=adapter.name, is_trainable=False
            )
        self._peft.eval()
        self._adapters[adapter.name] = adapter.path
        log.info("loaded adapter %s from %s", adapter.name, adapter.path)

    def unload_adapter(self, name: str) -> None:
        """Forget adapter `name` and free its weights; unknown names are ignored."""
        if name not in self._adapters:
            return
        self._peft.delete_adapter(name)
        del self._adapters[name]
        log.info("unloaded adapter %s", name)

    @contextmanager
    def _policy(self, adapter: AdapterRef | None) -> Iterator[Any]:
        """The model to run, in inference mode: base + `adapter`, or the base alone (with any
        loaded adapters disabled)."""
        if adapter is not None:
            self.load_adapter(adapter)  # outside inference mode: its weights stay normal tensors
            self._peft.set_adapter(adapter.name)
            with torch.inference_mode():
                yield self._peft
        elif self._peft is not None:
            with self._peft.disable_adapter(), torch.inference_mode():
                yield self._peft
        else:
            with torch.inference_mode():
                yield self._base_model

    # -- generation -------------------------------------------------------------------------

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if params.greedy
            else {
                "do_sample": True,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": 0,  # transformers' global default is 50; the other backends apply none
            }
        )
        return GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            # ignore_eos: forbid the stop tokens until max_new_tokens (benchmarks).
            min_new_tokens=params.max_new_tokens if params.ignore_eos else 0,
            num_return_sequences=params.n,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            repetition_penalty=1.0,
            num_beams=1,
            **sampling,
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
        config = self._generation_config(params)
        encoded = encode_prompts(self.tokenizer, prompts)
        stops = () if params.ignore_eos else self.stop_ids
        results: list[list[str]] = []
        with self._policy(adapter) as model, seeded(params.seed, self.device):
            for start in range(0, len(encoded), self.batch_size):
                rows = encoded[start : start + self.batch_size]
                ids, mask = left_pad(rows, self.pad_id)
                out = model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    generation_config=config,
                )
                new = out[:, ids.shape[1] :].tolist()
                for i in range(len(rows)):
                    group = new[i * params.n : (i + 1) * params.n]
                    results.append([decode_completion(self.tokenizer, g, stops) for g in group])
        return results

    # -- scoring ----------------------------------------------------------------------------

    def token_logprobs(
        self,
        prompts: list[Chat],
        completions: list[str],
        adapter: AdapterRef | None = None,
    ) -> list[list[float]]:
        """Log-probabilities (temperature 1) of each completion's tokens and the end-of-turn
        token after them, given its prompt, under the base or base + `adapter`.

        One forward pass per batch of right-padded prompt+completion sequences.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return []
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        completion_ids = encode_completions(self.tokenizer, completions, self.end_id)
        results: list[list[float]] = []
        with self._policy(adapter) as model:
            for start in range(0, len(prompt_ids), self.batch_size):
                p_rows = prompt_ids[start : start + self.batch_size]
                c_rows = completion_ids[start : start + self.batch_size]
                ids, mask = right_pad(
                    [p + c for p, c in zip(p_rows, c_rows, strict=True)], self.pad_id
                )
                ids, mask = ids.to(self.device), mask.to(self.device)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                # position t predicts token t + 1
                targets = ids[:, 1:].unsqueeze(-1)
                logp = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
                for i, (p, c) in enumerate(zip(p_rows, c_rows, strict=True)):
                    results.append(logp[i, len(p) - 1 : len(p) - 1 + len(c)].tolist())
        return results

    def option_logprobs(
        self,
        prompts: list[Chat],
        prefix: str,
        options: Sequence[str],
        adapter: AdapterRef | None = None,
    ) -> list[list[float]]:
        """Per prompt, the log-probability of each option's tokens right after `prefix` at the
        start of the assistant's answer (a prefilled "Score: " and the options "0".."5"):
        `[prompt][option]`, comparable across the options of a prompt.

        When the options, written after the prefix, differ in their last token alone (one
        digit each, in most tokenizers), one forward pass per prompt reads them all at once;
        otherwise each option is scored as a completion (`token_logprobs`, its end-of-turn
        token left out).
        """
        if not options:
            raise ValueError("option_logprobs needs at least one option")
        if not prompts:
            return []
        written = self.tokenizer([prefix + option for option in options], add_special_tokens=False)[
            "input_ids"
        ]
        shared = written[0][:-1]
        last = [ids[-1] for ids in written]
        if all(ids[:-1] == shared for ids in written) and len(set(last)) == len(last):
            rows = [ids + shared for ids in encode_prompts(self.tokenizer, prompts)]
            chosen = torch.tensor(last, device=self.device)
            results: list[list[float]] = []
            with self._policy(adapter) as model:
                for start in range(0, len(rows), self.batch_size):
                    ids, mask = left_pad(rows[start : start + self.batch_size], self.pad_id)
                    ids, mask = ids.to(self.device), mask.to(self.device)
                    positions = (mask.cumsum(-1) - 1).clamp(min=0)
                    out = model(
                        input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1
                    )
                    logp = out.logits[:, -1].float().log_softmax(-1)
                    results.extend(logp[:, chosen].tolist())
            return results
        flat = self.token_logprobs(
            [chat for chat in prompts for _ in options],
            [prefix + option for _ in prompts for option in options],
            adapter,
        )
        sums = [sum(scored[:-1]) for scored in flat]
        return [sums[i : i + len(options)] for i in range(0, len(sums), len(options))]

    def close(self) -> None:
        """Drop the model and adapters (the object is unusable afterwards)."""
        self._peft = None
        self._base_model = None
        self._adapters.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
