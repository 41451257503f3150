"""The torch-free side of the training stages: config files, datasets on disk, `StageResult`.

`load_config(cls, path)` reads a stage's JSON config into its frozen dataclass (declared in
`stages/configs.py`), validated by pydantic against the dataclass (unknown keys, wrongly
typed and out-of-bounds values are errors naming the key), and `write_config` writes one;
`summarize_dataset` describes a JSONL training file (rows, rows per task, sha256);
`StageResult` is the typed record a stage writes as `result.json` in its output folder and
the launcher reads back (`read_result`, `write_result`, atomically). Nothing here imports
torch, transformers or TRL, so the daemon and the launcher can use it without loading
training code. It does not train, load models or publish adapters (see `stages/stage_run.py`
and the stage modules).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import TypeAdapter, ValidationError

from stages.atomic import write_atomic

RESULT_FILE = "result.json"
Status = Literal["completed", "failed"]
NO_TASK = "(none)"

C = TypeVar("C")


class ConfigError(ValueError):
    """A stage config that cannot be used: unknown key, wrong type, bad value."""


# -- configs --------------------------------------------------------------------------------


@functools.cache
def _adapter(cls: type[Any]) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


def _config_error(cls: type[Any], exc: ValidationError) -> ConfigError:
    """One message naming every offending key of a stage config."""
    known = sorted(f.name for f in dataclasses.fields(cls))
    problems = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "unexpected_keyword_argument":
            problems.append(f"unknown config key {key!r} for {cls.__name__}")
        elif key:
            problems.append(f"config key {key!r}: {err['msg']}, got {err['input']!r}")
        else:
            problems.append(err["msg"])
    if any(err["type"] == "unexpected_keyword_argument" for err in exc.errors()):
        problems.append(f"known keys: {', '.join(known)}")
    return ConfigError("; ".join(problems))


def config_from_json(cls: type[C], text: str | bytes) -> C:
    """An instance of the config dataclass `cls` from a JSON object, validated by pydantic
    against the dataclass (strictly: "3" is not an integer); unknown keys and values of the
    wrong type or out of bounds raise `ConfigError` naming the key; missing keys take their
    defaults."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"a stage config must be a JSON object, not {type(data).__name__}")
    try:
        return _adapter(cls).validate_json(text, strict=True)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise _config_error(cls, exc) from None


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """`config_from_json` of a dict of JSON-ready values."""
    return config_from_json(cls, json.dumps(data))


def load_config(cls: type[C], path: str | Path) -> C:
    """Read a stage config (a JSON object) from `path` into `cls`."""
    try:
        return config_from_json(cls, Path(path).read_bytes())
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-ready data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def write_config(config: Any, path: str | Path) -> Path:
    """Write a config dataclass as a JSON file that `load_config` reads back, atomically
    (temporary file, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps(config_to_dict(config), indent=2) + "\n")


# -- datasets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSummary:
    """What a stage trained on: the file, its row count, rows per task, its sha256."""

    train_file: str
    rows: int
    tasks: dict[str, int]
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one a line; blank lines are skipped."""
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON: {exc}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: a row must be a JSON object")
            rows.append(row)
    return rows


def summarize_dataset(path: str | Path, rows: list[dict[str, Any]] | None = None) -> DatasetSummary:
    """Rows, rows per `task` (missing or null: "(none)") and sha256 of a JSONL file."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    rows = read_jsonl(path) if rows is None else rows
    tasks = Counter(str(row.get("task") or NO_TASK) for row in rows)
    return DatasetSummary(
        str(path.resolve()), len(rows), dict(sorted(tasks.items())), digest.hexdigest()
    )


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageResult:
    """What one run of a training stage did; written as `result.json` in its output folder.

    Curves are `(step, value)` pairs of the steps this run logged (a resumed run logs only the
    steps after its checkpoint). `tokens_seen` is what TRL counts as `num_tokens` (non-padding
    input tokens over all ranks: SFT chats, DPO chosen + rejected, GRPO prompts + completions)
    in this run; `tokens_per_second` divides it by `train_seconds`, the wall time inside
    `Trainer.train`; `seconds` is the whole stage (loading, training, publishing). Every number
    is finite: result.json is strict JSON.
    """

    stage: str
    status: Status
    reason: str | None = None
    """Why the stage failed, or None."""
    stopped_early: str | None = None
    """Why training stopped before `max_steps` without failing ("time budget"), or None."""
    adapter_version: int | None = None
    adapter_path: str | None = None
    """The published adapter folder (or the unpublished one when no registry is configured)."""
    parent_version: int | None = None
    parent_adapter: str | None = None
    steps: int = 0
    max_steps: int = 0
    loss_curve: tuple[tuple[int, float], ...] = ()
    reward_curve: tuple[tuple[int, float], ...] = ()
    """RL: mean reward per logged step; empty for SFT and DPO."""
    tokens_seen: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    """CPU time of this process inside `Trainer.train` (rank 0's); next to `train_seconds` it
    shows how much other processes on the machine slowed the run."""
    tokens_per_second: float = 0.0
    zero_variance_prompts: int | None = None
    """RL: prompts whose group of completions all got the same reward (no learning signal)."""
    prompts_seen: int | None = None
    """RL: prompts sampled (groups of completions) in this run; None for SFT and DPO."""
    resumed_from: str | None = None
    """The checkpoint this run resumed from, or None."""
    dataset: DatasetSummary | None = None
    world_size: int = 1
    output_dir: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    """The last logged value of every numeric metric the trainer reported."""

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["loss_curve"] = [list(p) for p in self.loss_curve]
        out["reward_curve"] = [list(p) for p in self.reward_curve]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown StageResult field {unknown[0]!r}")
        values = dict(data)
        values["loss_curve"] = tuple((int(s), float(v)) for s, v in data.get("loss_curve", ()))
        values["reward_curve"] = tuple((int(s), float(v)) for s, v in data.get("reward_curve", ()))
        if data.get("dataset") is not None:
            values["dataset"] = DatasetSummary(**data["dataset"])
        return cls(**values)


def write_result(result: StageResult, output_dir: str | Path) -> Path:
    """Write `result.json` into `output_dir` atomically (temporary file, fsync, rename)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"
    return write_atomic(output_dir / RESULT_FILE, text)


def read_result(output_dir: str | Path) -> StageResult | None:
    """The `StageResult` in `output_dir/result.json`, or None when there is none."""
    path = Path(output_dir) / RESULT_FILE
    if not path.is_file():
        return None
    return StageResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
