"""Fixtures for the evals tests: the world's tiny random model saved to disk, LoRA adapters with
random non-zero weights, and offline settings for lm-eval.

The model is `world.build_model` with random weights and an untied random output
layer whose rows for the special tokens other than <|end|> are zeroed, so greedy text is
made of ordinary characters (with tied embeddings a random model repeats its last token,
here a special token, and decodes to empty text). Its answers are wrong, which the tests
do not mind: they check that lm-eval scores every item 0/1 and that an adapter changes
the output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from stages.generate.api import AdapterRef
from tests.lora_support import random_lora_adapter
from world.model import build_model
from world.tokenizer import END, SPECIAL_TOKENS, build_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    torch.set_num_threads(1)


def save_world_model(path: Path, seed: int = 0) -> Path:
    """The world's tokenizer and a random tiny Llama with a shaped output layer, saved."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    end_id = tokenizer.convert_tokens_to_ids(END)
    with torch.no_grad():
        model.config.tie_word_embeddings = False
        head = torch.randn(model.lm_head.weight.shape, generator=generator)
        for token in SPECIAL_TOKENS:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id != end_id:
                head[token_id] = 0.0
        model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_adapter(model_dir: Path, out: Path, seed: int, rank: int = 4) -> Path:
    """A LoRA adapter with random non-zero A and B (a fresh one has B = 0: no effect)."""
    return random_lora_adapter(model_dir, out, seed, rank, LORA_TARGETS)


@pytest.fixture(scope="session")
def world_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_world_model(tmp_path_factory.mktemp("world-model"))


@pytest.fixture(scope="session")
def world_adapter(world_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AdapterRef:
    path = save_adapter(world_model_dir, tmp_path_factory.mktemp("adapter-a"), seed=1)
    return AdapterRef(name="eval-a", path=path)


@pytest.fixture(scope="session")
def other_world_adapter(
    world_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AdapterRef:
    path = save_adapter(world_model_dir, tmp_path_factory.mktemp("adapter-b"), seed=2)
    return AdapterRef(name="eval-b", path=path)


def write_user_tasks(folder: Path) -> Path:
    """A user's own lm-eval task folder: one generate_until task with lm-eval's exact_match."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "echo.jsonl"
    rows = [{"question": f"Say {i}.", "answer": str(i)} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "echo.yaml").write_text(
        "\n".join(
            [
                "task: user_echo",
                "dataset_path: json",
                "dataset_kwargs:",
                "  data_files:",
                f"    test: {json.dumps(str(data))}",
                "test_split: test",
                "output_type: generate_until",
                'doc_to_text: "{{question}}"',
                'doc_to_target: "{{answer}}"',
                "generation_kwargs:",
                '  until: ["<|end|>"]',
                "  do_sample: false",
                "  max_gen_toks: 4",
                "metric_list:",
                "  - metric: exact_match",
                "    aggregation: mean",
                "    higher_is_better: true",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return folder


@pytest.fixture
def user_tasks_dir(tmp_path: Path) -> Path:
    """A user's lm-eval task folder with one task, `user_echo` (4 items)."""
    return write_user_tasks(tmp_path / "user-tasks")
