"""The embedded "arith" world: a tiny, download-free setting for tutord's whole pipeline.

It provides a character-level tokenizer (`tokenizer`), a small Llama (`model`), task
families with prompts, reference answers and a verifier (`tasks`, `verify`), a stable
train/held-out split (`split`), a release schedule of families over cycles (`schedule`),
interaction logs in the ingest format (`logs`), a plain-text pretraining corpus (`corpus`),
the cached CPU pretraining of a base model (`pretrain.bootstrap`) and quick accuracy probes
(`probe`). It does not touch the database, the adapter registry or the daemon.
"""

from __future__ import annotations

from stages.world.config import WorldConfig
from stages.world.corpus import CorpusConfig
from stages.world.logs import LogMix, generate_logs, iter_logs, write_jsonl
from stages.world.model import ModelShape, build_model
from stages.world.pretrain import BootstrapSettings, bootstrap, read_manifest
from stages.world.schedule import DEFAULT_RELEASE, live_families
from stages.world.split import is_heldout, split_of
from stages.world.tasks import Problem, TaskFamily, families, get_family
from stages.world.tokenizer import build_tokenizer
from stages.world.verify import final_integer, verify_integer

__all__ = [
    "DEFAULT_RELEASE",
    "BootstrapSettings",
    "CorpusConfig",
    "LogMix",
    "ModelShape",
    "Problem",
    "TaskFamily",
    "WorldConfig",
    "bootstrap",
    "build_model",
    "build_tokenizer",
    "families",
    "final_integer",
    "generate_logs",
    "get_family",
    "is_heldout",
    "iter_logs",
    "live_families",
    "read_manifest",
    "split_of",
    "verify_integer",
    "write_jsonl",
]
