"""A test helper: small random-weight models of a common open architecture, not the world's.

`build_foreign_model(folder, ...)` saves an ordinary Hugging Face folder holding a
`Qwen2ForCausalLM` (Qwen2's module names: `q_proj`, `k_proj`, `v_proj`, `o_proj`,
`gate_proj`, `up_proj`, `down_proj`) with random weights, and a byte-level BPE tokenizer
trained here by the `tokenizers` library on a few thousand generated lines (arithmetic
questions and answers, English sentences), with the special tokens `<|endoftext|>`,
`<|im_start|>`, `<|im_end|>` and Qwen2's ChatML chat template (a default system turn when
the chat has none). Two styles, as Qwen2 ships them:

- `"instruct"` (Qwen2-Instruct): the tokenizer's eos is `<|im_end|>` (the end of a turn);
  the generation config lists `<|im_end|>` and `<|endoftext|>` and asks for sampling
  (temperature 0.7, top_p 0.8, top_k 20, repetition penalty 1.05), which tutord's greedy
  decoding must not pick up;
- `"base"` (Qwen2's base models): the tokenizer's eos is `<|endoftext|>` and the generation
  config lists only it (with `max_new_tokens` 2048), although the chat template ends every
  turn with `<|im_end|>`: a base model people use with its chat template.

Like Qwen2 the embedding matrix is larger than the tokenizer's vocabulary (padded to a
multiple of 64), there is no bos token, and `padding_side` is whatever the caller asks (a
tokenizer saved with `"left"` must not change how training pads).

Weights are shaped so that greedy text is varied and well behaved on two backends: the
embeddings are scaled up (x10), so the next token depends on the last ones rather than on a
near-constant average of the context; the output layer is untied and drawn N(0, 1), so
logits are sharp and greedy choices never hinge on rounding; the rows of special tokens
other than `<|im_end|>` and of the padded ids are zero (never the greedy choice); and
`<|im_end|>` gets 1.1 x the row of a token greedy text often reaches after a few tokens, so
greedy answers end their turn there. The model learns nothing and knows nothing; sampled
text is noise.

`foreign_models` is a session-scoped pytest fixture (import it into a test module) that
builds two such models once: the policy (base style, 2 layers, hidden 128, tokenizer saved
with padding side "left") and the judge (instruct style, other seed, 2 layers, hidden 64).

It needs torch, transformers and tokenizers; it does not run tutord.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
QWEN2_LINEAR = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)

# Qwen2's own template (Qwen2-Instruct): ChatML with a default system turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

Style = Literal["instruct", "base"]
EMBED_SCALE = 10.0

SUBJECTS = ("The cat", "A small dog", "My friend", "The teacher", "Our team", "The river", "She")
VERBS = ("sees", "likes", "finds", "follows", "answers", "opens", "counts", "writes")
OBJECTS = ("the door", "a letter", "the numbers", "the question", "an apple", "the light")
ENDINGS = ("today.", "again.", "in the morning.", "at home.", "with care.", "quickly.")
CHAT_PROMPTS = (
    "What comes after 17?",
    "What is 12 + 30?",
    "Say hello.",
    "What is the opposite of hot?",
    "Name a colour.",
)


@dataclass(frozen=True)
class Shape:
    """The architecture's sizes. head_dim = hidden / heads must be one vLLM's CPU attention
    supports (32, 64, 80, ...)."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    max_positions: int = 512
    vocab: int = 1000
    """BPE vocabulary the tokenizer trains towards (the special tokens and bytes included)."""


def corpus(seed: int = 0, lines: int = 3000) -> list[str]:
    """Lines of text to train the tokenizer: arithmetic questions and answers, English."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        kind = i % 4
        if kind == 0:
            out.append(f"What is {a} + {b}? {a + b}")
        elif kind == 1:
            out.append(f"What comes after {a}? {a + 1}")
        elif kind == 2:
            out.append(f"{a} - {b} = {a - b}. {a} * {b} = {a * b}.")
        else:
            words = [rng.choice(x) for x in (SUBJECTS, VERBS, OBJECTS, ENDINGS)]
            out.append(" ".join(words))
    return out


def train_tokenizer(
    lines: list[str], *, vocab: int, style: Style, padding_side: str
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `lines`, with ChatML special tokens and template."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END if style == "instruct" else ENDOFTEXT,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHATML_TEMPLATE,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
    )


def _greedy(model: Qwen2ForCausalLM, prompt: list[int], end_id: int, limit: int) -> list[int]:
    """The first `limit` greedy tokens after `prompt`, or fewer when `end_id` comes (kept)."""
    out = model.generate(
        input_ids=torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=limit,
        min_new_tokens=0,
        do_sample=False,
        eos_token_id=end_id,
        pad_token_id=end_id,
    )
    return [int(t) for t in out[0, len(prompt) :].tolist()]


def shape_output_layer(
    model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase, *, seed: int, limit: int = 24
) -> str:
    """Edit the embeddings and the output layer (see the module docstring); returns the token
    that `<|im_end|>` now shadows."""
    end_id = tokenizer.convert_tokens_to_ids(IM_END)
    specials = {tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    padded = range(len(tokenizer), model.config.vocab_size)
    prompts = [
        tokenizer(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            ),
            add_special_tokens=False,
        )["input_ids"]
        for p in CHAT_PROMPTS
    ]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(EMBED_SCALE)
        model.config.tie_word_embeddings = False
        head = torch.randn(model.lm_head.weight.shape, generator=generator)
        model.lm_head.weight = torch.nn.Parameter(head)
        for token_id in [*(specials - {end_id}), *padded]:
            head[token_id] = 0.0
        head[end_id] = -1.0 * head[end_id].abs()  # never greedy until it shadows a token
        texts = [_greedy(model, p, end_id, limit) for p in prompts]
        later = collections.Counter(t for text in texts for t in text[3:] if t not in specials)
        best, best_score = later.most_common(1)[0][0], -1
        for candidate, _ in later.most_common(8):
            head[end_id] = 1.1 * head[candidate]
            score = sum(2 < len(_greedy(model, p, end_id, limit)) < limit for p in prompts)
            if score > best_score:
                best, best_score = candidate, score
        head[end_id] = 1.1 * head[best]
    return str(tokenizer.convert_ids_to_tokens(best))


def build_foreign_model(
    folder: Path,
    *,
    seed: int = 0,
    shape: Shape | None = None,
    style: Style = "instruct",
    padding_side: str = "right",
) -> Path:
    """Save a random-weight Qwen2 chat model and its trained BPE tokenizer into `folder`."""
    shape = shape or Shape()
    tokenizer = train_tokenizer(
        corpus(seed), vocab=shape.vocab, style=style, padding_side=padding_side
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    eos = ids[IM_END] if style == "instruct" else ids[ENDOFTEXT]
    config = Qwen2Config(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions,
        max_window_layers=shape.layers,
        tie_word_embeddings=True,
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=eos,
        pad_token_id=ids[ENDOFTEXT],
        rope_theta=1000000.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.eval()
    shape_output_layer(model, tokenizer, seed=seed)
    if style == "instruct":  # Qwen2-Instruct's: sampling defaults, two eos ids
        model.generation_config = GenerationConfig(
            bos_token_id=ids[ENDOFTEXT],
            eos_token_id=[ids[IM_END], ids[ENDOFTEXT]],
            pad_token_id=ids[ENDOFTEXT],
            do_sample=True,
            temperature=0.7,
            top_p=0.8,
            top_k=20,
            repetition_penalty=1.05,
        )
    else:  # Qwen2's base models': greedy, a long default length, eos <|endoftext|> only
        model.generation_config = GenerationConfig(
            bos_token_id=ids[ENDOFTEXT],
            eos_token_id=ids[ENDOFTEXT],
            do_sample=False,
            max_new_tokens=2048,
        )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass(frozen=True)
class ForeignModels:
    """The two model folders of the `foreign_models` fixture."""

    policy: Path
    judge: Path


POLICY_SHAPE = Shape()
JUDGE_SHAPE = Shape(hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128, vocab=800)


@pytest.fixture(scope="session")
def foreign_models(tmp_path_factory: pytest.TempPathFactory) -> ForeignModels:
    """A base-style Qwen2 policy (tokenizer padding side "left") and an instruct-style,
    smaller Qwen2 judge with another tokenizer and seed, built once per session."""
    root = tmp_path_factory.mktemp("foreign")
    policy = build_foreign_model(
        root / "qwen2-policy", seed=0, shape=POLICY_SHAPE, style="base", padding_side="left"
    )
    judge = build_foreign_model(root / "qwen2-judge", seed=1, shape=JUDGE_SHAPE, style="instruct")
    return ForeignModels(policy=policy, judge=judge)
