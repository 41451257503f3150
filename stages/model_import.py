"""Turning a model people bring into an ordinary local Hugging Face folder.

A source is a GGUF file (llama.cpp, Ollama) or a Hugging Face model folder. `check_gguf`
reads a GGUF file's header without loading its tensors and refuses a file that is not GGUF,
is truncated, or holds an architecture transformers cannot dequantize. `convert` loads the
source with transformers (dequantizing a GGUF), and writes safetensors weights in the chosen
dtype with the tokenizer (and its chat template) into a folder, through a temporary folder
and a rename, so that a half-written model is never used. It reads local files only: it
never downloads. It does not know model names, pinned hashes or the database
(`daemon/model_store.py` does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.atomic import replace_dir, sha256_file

DTYPES = ("bfloat16", "float16", "float32")
GGUF_MAGIC = b"GGUF"


class ModelImportError(Exception):
    """The source cannot be imported: missing, truncated, not a model, or unsupported."""


@dataclass(frozen=True)
class ConvertedModel:
    """What `convert` wrote: the model's class, size, dtype and chat template."""

    architecture: str
    """The transformers class, e.g. `LlamaForCausalLM`."""
    model_type: str
    parameters: int
    dtype: str
    chat_template: str | None
    eos_token: str | None
    max_length: int | None
    """`max_position_embeddings` of the config, when it has one."""
    weights_sha256: str
    """The sha256 of the written `model.safetensors`."""


def check_gguf(path: Path) -> str:
    """The GGUF file's architecture (`general.architecture`), after checking that the
    file is whole and that transformers can dequantize that architecture."""
    if not path.is_file():
        raise ModelImportError(f"{path}: no such file")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ModelImportError(f"{path}: not a GGUF file (it does not start with 'GGUF')")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        field = reader.fields.get("general.architecture")
        architecture = str(field.contents()) if field is not None else ""
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except (ValueError, OSError, IndexError, KeyError, EOFError) as exc:
        raise ModelImportError(f"{path}: cannot read the GGUF file (truncated?): {exc}") from exc
    size = path.stat().st_size
    if end > size:
        raise ModelImportError(
            f"{path}: truncated: its tensors end at byte {end} but the file has {size} bytes"
        )
    if not architecture:
        raise ModelImportError(f"{path}: the GGUF file names no general.architecture")
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelImportError(
            f"{path}: transformers cannot dequantize GGUF architecture {architecture!r} "
            f"(it reads: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})"
        )
    return architecture


def _load(source: Path, dtype: str) -> tuple[Any, Any]:
    """The model and tokenizer of a GGUF file or a model folder, from local files only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if source.is_file():
        check_gguf(source)
        where: dict[str, Any] = {"gguf_file": source.name}
        folder = source.parent
    elif (source / "config.json").is_file():
        where, folder = {}, source
    else:
        raise ModelImportError(
            f"{source}: neither a GGUF file nor a Hugging Face folder (no config.json)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **where)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype, local_files_only=True, **where
        )
    except (ValueError, OSError, KeyError) as exc:
        raise ModelImportError(f"{source}: transformers cannot load it: {exc}") from exc
    if getattr(model.config, "quantization_config", None) is not None:
        # a dequantized GGUF model keeps its quantization note, and save_pretrained refuses
        # it: rebuild the same model from the config without it, with the same weights
        delattr(model.config, "quantization_config")
        state = model.state_dict()
        model = AutoModelForCausalLM.from_config(model.config, dtype=torch_dtype)
        model.load_state_dict(state)
    return model, tokenizer


def convert(source: Path, out_dir: Path, dtype: str = "bfloat16") -> ConvertedModel:
    """Write `source` (a GGUF file or a model folder) as an ordinary Hugging Face folder at
    `out_dir` (replaced whole when it exists), weights in `dtype`."""
    if dtype not in DTYPES:
        raise ModelImportError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    model, tokenizer = _load(source, dtype)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if partial.exists():
        import shutil

        shutil.rmtree(partial)
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.save_pretrained(partial, max_shard_size="100GB")
    tokenizer.save_pretrained(partial)
    weights = partial / "model.safetensors"
    converted = ConvertedModel(
        architecture=type(model).__name__,
        model_type=str(model.config.model_type),
        parameters=sum(p.numel() for p in model.parameters()),
        dtype=dtype,
        chat_template=getattr(tokenizer, "chat_template", None),
        eos_token=getattr(tokenizer, "eos_token", None),
        max_length=getattr(model.config, "max_position_embeddings", None),
        weights_sha256=sha256_file(weights),
    )
    replace_dir(partial, out_dir)
    return converted
