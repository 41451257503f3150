"""The arith world's character-level tokenizer: one token per character, plus special tokens.

Builds a `transformers.PreTrainedTokenizerFast` over a fixed vocabulary (digits, arithmetic
operators, letters, punctuation, space, newline) with a `tokenizers` WordLevel model and a
per-character pre-tokenizer, so that any text made of those characters encodes and decodes
losslessly; any other character becomes `<|unk|>`. Special tokens: `<|pad|>`, `<|bos|>`,
`<|unk|>` and the chat markers `<|system|>`, `<|user|>`, `<|assistant|>`, `<|end|>`.
`<|end|>` ends a turn and is also the tokenizer's eos token (as in most chat tokenizers), so
generation stops there. Plain encoding prepends `<|bos|>`; the chat template writes its own
`<|bos|>` (and `apply_chat_template` adds no other), like Llama 3's.

It does not train anything, load anything from a hub, or know about the tasks.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD = "<|pad|>"
BOS = "<|bos|>"
UNK = "<|unk|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, UNK, SYSTEM, USER, ASSISTANT, END)

# Every ordinary character the world writes, and the usual ones people type besides.
CHARACTERS: str = (
    string.digits
    + string.ascii_lowercase
    + string.ascii_uppercase
    + " \n"
    + "+-*/=x×÷−^()?.,!:;'\"%$#&@_<>[]{}|~`\\"
)

# `messages` in, text out. Ends every turn with <|end|>; `add_generation_prompt` opens the
# assistant's turn. System messages render like the others. The assistant's content and its
# <|end|> sit in a {% generation %} block, so `return_assistant_tokens_mask=True` (TRL's
# `assistant_only_loss`) can mask everything else.
CHAT_TEMPLATE: str = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>' }}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def vocabulary() -> dict[str, int]:
    """Token -> id: the special tokens first (pad is 0), then every character, in order."""
    tokens = [*SPECIAL_TOKENS, *dict.fromkeys(CHARACTERS)]
    return {token: i for i, token in enumerate(tokens)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh character-level tokenizer with the world's fixed vocabulary and chat template."""
    vocab = vocabulary()
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character (newline included) is its own pre-token; WordLevel maps it to an id.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, vocab[BOS])],
    )
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=END,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT],
        clean_up_tokenization_spaces=False,
        model_max_length=256,  # the model's positions (`world.model.ModelShape`)
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
