"""A test helper: a tiny llama GGUF file that transformers loads like a real llama.cpp export.

`write_tiny_gguf` writes, with the `gguf` package's `GGUFWriter`, a file laid out the way
llama.cpp's `convert_hf_to_gguf.py` lays out a llama model such as SmolLM2-135M-Instruct:

- metadata: `general.architecture`, `general.name`, `general.file_type`,
  `general.quantization_version`, the `<arch>.*` shape keys (block_count, context_length,
  embedding_length, feed_forward_length, attention.head_count / head_count_kv,
  attention.layer_norm_rms_epsilon, rope.freq_base, rope.dimension_count, vocab_size);
- a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`, `pre = "smollm"`): ids 0-2 are the
  control tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`; ids 3-258 are the 256 bytes, in
  byte order, spelled with GPT-2's `bytes_to_unicode` alphabet (byte `b` is id `3 + b`); then one
  token per entry of `MERGES`. unk = 0, bos = 1, eos = pad = 2 (`<|im_end|>`), as in SmolLM2.
  `add_bos_token` and `add_space_prefix` are false, so encoding adds nothing;
- `tokenizer.chat_template`: plain ChatML, with NO default system turn, so one user message
  renders as `<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n`;
- tensors `token_embd.weight`, `blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,
  ffn_gate,ffn_up,ffn_down}.weight` and `output_norm.weight`; no `output.weight`, so the
  embeddings are tied. Weights are random (a seeded numpy Generator), F32 by default, or Q8_0
  for the 2-D ones with `quantize="Q8_0"` (norms stay F32, as llama.cpp keeps them).
  `attn_q` / `attn_k` carry llama.cpp's rotary row permutation, which transformers undoes on
  load, so the loaded `q_proj` / `k_proj` equal `tiny_llama_weights(...)` exactly (F32).

With `architecture="llama"`, `AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)` gives
a `LlamaForCausalLM` and `AutoTokenizer.from_pretrained(folder, gguf_file=name)` a fast tokenizer.
Any other `architecture` string writes the same file under that name (keys prefixed with it),
for tests that check an unsupported architecture is refused: transformers then raises
`ValueError("GGUF model with architecture ... is not supported yet.")` from
`AutoModelForCausalLM.from_pretrained`, `AutoConfig.from_pretrained` and
`AutoTokenizer.from_pretrained` alike (all three read the config from the file first).

What it does not do: the model is untrained (generation is noise), the vocabulary has only a
handful of merges (text encodes to roughly one token per byte), and there is no llama.cpp
runtime check -- only what transformers and `gguf` read is exercised. It needs `numpy` and
`gguf`, not torch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
from gguf import (
    GGML_QUANT_VERSION,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    TokenType,
)
from gguf.quants import quantize as gguf_quantize

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
UNK_ID = 0
BOS_ID = 1
EOS_ID = 2
PAD_ID = 2
BYTE_OFFSET = len(SPECIAL_TOKENS)  # byte b is token id BYTE_OFFSET + b

# A few GPT-2-style merges ("Ġ" is the byte-level spelling of a space); each adds its result as a
# token, after the 256 bytes, in this order (earlier = higher priority).
MERGES = (
    "Ġ t",
    "h e",
    "Ġ a",
    "i n",
    "Ġt he",
    "e r",
    "o n",
    "Ġ w",
    "a t",
    "i s",
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

ROPE_THETA = 10000.0
RMS_NORM_EPS = 1e-5
QUANT_TYPES = {"Q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0)}


def byte_level_alphabet() -> list[str]:
    """The 256 characters GPT-2's `bytes_to_unicode` spells bytes 0..255 with, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    spelling = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + extra)
            extra += 1
    return [spelling[b] for b in range(256)]


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """`(tokens, token_types, merges)` of the tiny byte-level BPE vocabulary."""
    tokens = [*SPECIAL_TOKENS, *byte_level_alphabet()]
    types = [int(TokenType.CONTROL)] * len(SPECIAL_TOKENS) + [int(TokenType.NORMAL)] * 256
    for merge in MERGES:
        tokens.append(merge.replace(" ", ""))
        types.append(int(TokenType.NORMAL))
    assert len(set(tokens)) == len(tokens), "merge results must be new tokens"
    return tokens, types, list(MERGES)


def tiny_llama_weights(
    *,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab_size: int | None = None,
) -> dict[str, np.ndarray]:
    """The random float32 weights `write_tiny_gguf` writes, under transformers' llama names and in
    transformers' layout (`[out_features, in_features]`, q/k not permuted)."""
    _check_shape(hidden, heads, kv_heads)
    vocab = len(tiny_vocab()[0]) if vocab_size is None else vocab_size
    head_dim = hidden // heads
    kv_dim = kv_heads * head_dim
    ff = _feed_forward(hidden)
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)

    weights = {"model.embed_tokens.weight": matrix(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        weights[p + "input_layernorm.weight"] = norm()
        weights[p + "self_attn.q_proj.weight"] = matrix(hidden, hidden)
        weights[p + "self_attn.k_proj.weight"] = matrix(kv_dim, hidden)
        weights[p + "self_attn.v_proj.weight"] = matrix(kv_dim, hidden)
        weights[p + "self_attn.o_proj.weight"] = matrix(hidden, hidden)
        weights[p + "post_attention_layernorm.weight"] = norm()
        weights[p + "mlp.gate_proj.weight"] = matrix(ff, hidden)
        weights[p + "mlp.up_proj.weight"] = matrix(ff, hidden)
        weights[p + "mlp.down_proj.weight"] = matrix(hidden, ff)
    weights["model.norm.weight"] = norm()
    return weights


def write_tiny_gguf(
    path: Path,
    *,
    architecture: str = "llama",
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    context: int = 256,
    quantize: str | None = None,
) -> Path:
    """Write the tiny GGUF to `path` (via a temporary file in the same folder, then `os.replace`)
    and return `path`. `quantize="Q8_0"` stores the 2-D weights as Q8_0 blocks (needs `hidden`
    to be a multiple of 32); `None` stores everything as F32."""
    path = Path(path)
    if quantize is not None and quantize not in QUANT_TYPES:
        raise ValueError(f"quantize must be None or one of {sorted(QUANT_TYPES)}, not {quantize!r}")
    if quantize is not None and hidden % 32:
        raise ValueError(f"{quantize} needs hidden to be a multiple of 32, not {hidden}")
    tokens, token_types, merges = tiny_vocab()
    weights = tiny_llama_weights(
        seed=seed, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads
    )
    qtype, file_type = QUANT_TYPES[quantize] if quantize else (None, LlamaFileType.ALL_F32)

    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = GGUFWriter(tmp, architecture)
        writer.add_name("tiny-gguf")
        writer.add_block_count(layers)
        writer.add_context_length(context)
        writer.add_embedding_length(hidden)
        writer.add_feed_forward_length(_feed_forward(hidden))
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_freq_base(ROPE_THETA)
        writer.add_layer_norm_rms_eps(RMS_NORM_EPS)
        writer.add_file_type(int(file_type))
        writer.add_vocab_size(len(tokens))
        writer.add_rope_dimension_count(hidden // heads)
        writer.add_quantization_version(GGML_QUANT_VERSION)

        writer.add_add_space_prefix(False)
        writer.add_add_bos_token(False)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("smollm")
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(BOS_ID)
        writer.add_eos_token_id(EOS_ID)
        writer.add_unk_token_id(UNK_ID)
        writer.add_pad_token_id(PAD_ID)
        writer.add_chat_template(CHATML_TEMPLATE)

        for name, tensor in _gguf_tensors(weights, layers, heads, kv_heads):
            if qtype is not None and tensor.ndim == 2:
                writer.add_tensor(name, gguf_quantize(tensor, qtype), raw_dtype=qtype)
            else:
                writer.add_tensor(name, tensor)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def _gguf_tensors(
    weights: dict[str, np.ndarray], layers: int, heads: int, kv_heads: int
) -> list[tuple[str, np.ndarray]]:
    """The weights under llama.cpp's names, q/k rows permuted as `convert_hf_to_gguf.py` does."""
    out = [("token_embd.weight", weights["model.embed_tokens.weight"])]
    for i in range(layers):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", weights[p + "input_layernorm.weight"]),
            (b + "attn_q.weight", _permute(weights[p + "self_attn.q_proj.weight"], heads)),
            (b + "attn_k.weight", _permute(weights[p + "self_attn.k_proj.weight"], kv_heads)),
            (b + "attn_v.weight", weights[p + "self_attn.v_proj.weight"]),
            (b + "attn_output.weight", weights[p + "self_attn.o_proj.weight"]),
            (b + "ffn_norm.weight", weights[p + "post_attention_layernorm.weight"]),
            (b + "ffn_gate.weight", weights[p + "mlp.gate_proj.weight"]),
            (b + "ffn_up.weight", weights[p + "mlp.up_proj.weight"]),
            (b + "ffn_down.weight", weights[p + "mlp.down_proj.weight"]),
        ]
    out.append(("output_norm.weight", weights["model.norm.weight"]))
    return [(name, np.ascontiguousarray(tensor, dtype=np.float32)) for name, tensor in out]


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: interleave each head's two rotary halves."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _feed_forward(hidden: int) -> int:
    return 2 * hidden


def _check_shape(hidden: int, heads: int, kv_heads: int) -> None:
    if hidden % heads or heads % kv_heads or (hidden // heads) % 2:
        raise ValueError(
            f"need hidden % heads == 0, heads % kv_heads == 0 and an even head size; got "
            f"hidden={hidden}, heads={heads}, kv_heads={kv_heads}"
        )
