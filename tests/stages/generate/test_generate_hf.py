"""The transformers backend on the world's tiny random model: padding, seeds, stopping,
adapters and token log-probabilities."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stages.generate.api import AdapterRef, GenerationBackend, SamplingParams
from stages.generate.chat import encode_completions, encode_prompts
from stages.generate.hf import TransformersBackend

GREEDY = SamplingParams(max_new_tokens=24)
MORE_PROMPTS = [[{"role": "user", "content": f"{a}+{b}="}] for a in range(4) for b in (7, 15)]


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> torch.nn.Module:
    """The base model loaded on its own, untouched by any adapter."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def manual_greedy(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    """Greedy tokens by repeated full forward passes, no stopping, no cache, no padding."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> TransformersBackend:
    b = TransformersBackend(tiny_model_dir, device="cpu", batch_size=64)
    yield b
    b.close()


def test_satisfies_protocol(backend: TransformersBackend) -> None:
    assert isinstance(backend, GenerationBackend)


def test_batched_left_padded_greedy_equals_one_by_one(
    backend: TransformersBackend, prompts: list, tiny_model_dir: Path
) -> None:
    everything = prompts + MORE_PROMPTS
    lengths = {len(ids) for ids in encode_prompts(backend.tokenizer, everything)}
    assert len(lengths) > 1  # padding really happens
    batched = backend.generate(everything, GREEDY)
    one_by_one = [backend.generate([chat], GREEDY)[0] for chat in everything]
    assert batched == one_by_one
    assert all(len(group) == 1 for group in batched)
    assert any(group[0] for group in batched)  # not all empty
    # several batches of 3 give the same as one batch
    small = TransformersBackend(tiny_model_dir, device="cpu", batch_size=3)
    assert small.generate(everything, GREEDY) == batched


def test_seeded_sampling_is_reproducible(backend: TransformersBackend, prompts: list) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.95, n=4, max_new_tokens=12, seed=7)
    state = torch.random.get_rng_state()
    first = backend.generate(prompts, params)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    second = backend.generate(prompts, params)
    assert first == second
    assert [len(group) for group in first] == [4] * len(prompts)
    assert len({text for group in first for text in group}) > 1  # it does sample
    other = backend.generate(
        prompts, SamplingParams(temperature=1.0, n=4, max_new_tokens=12, seed=8)
    )
    assert other != first


def test_stops_at_end_of_turn(
    backend: TransformersBackend, prompts: list, reference: torch.nn.Module
) -> None:
    """The completion is exactly the greedy continuation cut before the first <|end|>."""
    everything = prompts + MORE_PROMPTS
    end_id = backend.tokenizer.convert_tokens_to_ids("<|end|>")
    assert backend.stop_ids[0] == end_id
    texts = backend.generate(everything, SamplingParams(max_new_tokens=32))
    stopped = 0
    for chat, [text] in zip(everything, texts, strict=True):
        raw = manual_greedy(reference, encode_prompts(backend.tokenizer, [chat])[0], 32)
        cut = raw.index(end_id) if end_id in raw else len(raw)
        assert text == backend.tokenizer.decode(raw[:cut], skip_special_tokens=True)
        assert "<|" not in text
        stopped += cut < len(raw)
    assert stopped > 0, "no prompt reached <|end|>: the test proves nothing"
    # ignore_eos runs to max_new_tokens
    forced = backend.generate(everything, SamplingParams(max_new_tokens=32, ignore_eos=True))
    assert sum(len(f) > len(t) for [f], [t] in zip(forced, texts, strict=True)) >= stopped


def test_adapter_changes_output_and_base_is_restored(
    backend: TransformersBackend, prompts: list, tiny_adapter: AdapterRef, other_adapter: AdapterRef
) -> None:
    base = backend.generate(prompts, GREEDY)
    adapted = backend.generate(prompts, GREEDY, tiny_adapter)
    other = backend.generate(prompts, GREEDY, other_adapter)
    assert adapted != base
    assert other != adapted
    assert set(backend.adapters) >= {tiny_adapter.name, other_adapter.name}
    assert backend.generate(prompts, GREEDY) == base  # adapters disabled for the base
    assert backend.generate(prompts, GREEDY, tiny_adapter) == adapted  # cached, same result


def test_adapter_name_reuse_with_another_path_fails(
    backend: TransformersBackend, prompts: list, tiny_adapter: AdapterRef, other_adapter: AdapterRef
) -> None:
    backend.load_adapter(tiny_adapter)
    with pytest.raises(ValueError, match="its own name"):
        backend.generate(prompts, GREEDY, AdapterRef(tiny_adapter.name, other_adapter.path))


def test_unload_adapter(
    tiny_model_dir: Path, prompts: list, tiny_adapter: AdapterRef, other_adapter: AdapterRef
) -> None:
    b = TransformersBackend(tiny_model_dir, device="cpu")
    base = b.generate(prompts, GREEDY)
    adapted = b.generate(prompts, GREEDY, tiny_adapter)
    b.load_adapter(other_adapter)
    b.unload_adapter(tiny_adapter.name)
    assert set(b.adapters) == {other_adapter.name}
    assert b.generate(prompts, GREEDY) == base
    assert b.generate(prompts, GREEDY, tiny_adapter) == adapted  # reloads on demand


def test_missing_adapter_folder(
    backend: TransformersBackend, prompts: list, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        backend.generate(prompts, GREEDY, AdapterRef("nope", tmp_path))


def manual_logprobs(
    model: torch.nn.Module, prompt: list[int], completion: list[int]
) -> list[float]:
    """One unpadded sequence, full log_softmax: the reference computation."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return [logp[len(prompt) - 1 + i, token].item() for i, token in enumerate(completion)]


@pytest.mark.parametrize("use_adapter", [False, True])
def test_token_logprobs_match_manual(
    tiny_model_dir: Path, prompts: list, tiny_adapter: AdapterRef, use_adapter: bool
) -> None:
    b = TransformersBackend(tiny_model_dir, device="cpu", batch_size=2)  # several batches
    adapter = tiny_adapter if use_adapter else None
    completions = ["3", "8 is the answer", "", "42", "x" * 9]
    got = b.token_logprobs(prompts, completions, adapter)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter.path)).eval()
    p_ids = encode_prompts(b.tokenizer, prompts)
    c_ids = encode_completions(b.tokenizer, completions, b.end_id)
    for row, p, c, text in zip(got, p_ids, c_ids, completions, strict=True):
        assert len(row) == len(text) + 1  # one token a character, plus <|end|>
        assert row == pytest.approx(manual_logprobs(model, p, c), abs=1e-4)
        assert all(value <= 0 for value in row)


def test_token_logprobs_of_greedy_text_are_maximal(
    backend: TransformersBackend, prompts: list, reference: torch.nn.Module
) -> None:
    """Greedy tokens are argmax tokens: their log-probabilities are each position's maximum."""
    texts = [group[0] for group in backend.generate(prompts, GREEDY)]
    scored = backend.token_logprobs(prompts, texts)
    p_ids = encode_prompts(backend.tokenizer, prompts)
    c_ids = encode_completions(backend.tokenizer, texts, backend.end_id)
    for row, p, c in zip(scored, p_ids, c_ids, strict=True):
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([p + c])).logits[0]
        best = torch.log_softmax(logits, dim=-1)[len(p) - 1 : len(p) - 1 + len(c)].max(-1)
        # all of them, or the max_new_tokens text tokens when it did not stop
        n = min(len(c), GREEDY.max_new_tokens)
        assert row[:n] == pytest.approx(best.values[:n].tolist(), abs=1e-4)


def test_token_logprobs_checks_lengths(backend: TransformersBackend, prompts: list) -> None:
    with pytest.raises(ValueError, match="completions"):
        backend.token_logprobs(prompts, ["a"])
    assert backend.token_logprobs([], []) == []
    assert backend.generate([], GREEDY) == []


@pytest.mark.parametrize("use_adapter", [False, True])
def test_option_logprobs_read_each_option_after_the_prefix(
    tiny_model_dir: Path, prompts: list, tiny_adapter: AdapterRef, use_adapter: bool
) -> None:
    """Digits after "Score: " differ in their last token: one left-padded forward pass per
    prompt gives each digit's log-probability there, as scoring "Score: N" unpadded does.
    Options of different lengths are scored as whole completions."""
    b = TransformersBackend(tiny_model_dir, device="cpu", batch_size=2)  # several batches
    adapter = tiny_adapter if use_adapter else None
    digits = [str(n) for n in range(6)]
    got = b.option_logprobs(prompts, "Score: ", digits, adapter)
    assert len(got) == len(prompts) and all(len(row) == 6 for row in got)
    for prompt, row in zip(prompts, got, strict=True):
        scored = b.token_logprobs([prompt] * 6, [f"Score: {d}" for d in digits], adapter)
        assert row == pytest.approx([s[-2] for s in scored], abs=1e-4)  # the digit, not <|end|>
    mixed = b.option_logprobs(prompts[:1], "Score: ", ["1", "12"], adapter)
    [whole] = b.token_logprobs(prompts[:1], ["Score: 12"], adapter)
    assert mixed[0][1] - mixed[0][0] == pytest.approx(whole[-2], abs=1e-4)
    with pytest.raises(ValueError, match="option"):
        b.option_logprobs(prompts, "Score: ", [])
    assert b.option_logprobs([], "Score: ", digits) == []
