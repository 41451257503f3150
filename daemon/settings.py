"""tutord's settings: a pydantic-settings model read from `tutord.toml` in the home folder.

Precedence, highest first: values passed in code, `TUTORD_*` environment variables
(nested keys joined by `__`, e.g. `TUTORD_INGEST__BATCH_SIZE`), `tutord.toml`, defaults.
Unknown keys and bad values raise `SettingsError`, whose message names the key.
This module does not create the home folder (see `daemon/home.py`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from daemon.curriculum import CurriculumSettings

CONFIG_FILENAME = "tutord.toml"
ENV_PREFIX = "TUTORD_"


class SettingsError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


class IngestSettings(BaseModel):
    """How interaction logs are read."""

    model_config = ConfigDict(extra="forbid")

    max_line_bytes: int = Field(
        1_048_576,
        gt=0,
        description="Longest accepted JSONL line in bytes; longer ones are rejected.",
    )
    batch_size: int = Field(5_000, gt=0, description="Records written per database transaction.")
    default_source: str = Field(
        "default",
        min_length=1,
        max_length=200,
        description="Source when --source is not given.",
    )


class ReplaySettings(BaseModel):
    """The replay buffer of earlier training data."""

    model_config = ConfigDict(extra="forbid")

    ratio: float = Field(
        0.25, ge=0, lt=1, description="Share of a stage's dataset drawn from the replay buffer."
    )
    capacity: int = Field(
        200_000,
        gt=0,
        description="Most items kept per kind (sft, pair, prompt).",
    )


class AdapterSettings(BaseModel):
    """The adapter registry."""

    model_config = ConfigDict(extra="forbid")

    keep_last: int = Field(
        10, ge=1, description="Adapter versions kept by retention, besides production's line."
    )


BackendKind = Literal["transformers", "vllm", "openai"]


class ModelSettings(BaseModel):
    """The policy: its base model and how it generates."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(
        "", description="Base model folder or hub id; empty: the embedded arith world's base."
    )
    backend: BackendKind = Field("transformers", description="Generation backend.")
    server_url: str | None = Field(
        None, description="OpenAI-compatible server (backend 'openai'), e.g. http://host:8000."
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch in this process (None: torch's default)."
    )


class JudgeSettings(BaseModel):
    """The LLM judge. Empty `base` means the policy judges itself (self-rewarding)."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field("", description="Judge model; empty: the policy itself.")
    backend: BackendKind = "transformers"
    server_url: str | None = None
    enabled: bool = Field(True, description="Score candidates with the judge at all.")
    k: int = Field(1, ge=1, description="Verdicts sampled and averaged per candidate.")
    temperature: float = Field(0.7, ge=0)
    max_new_tokens: int = Field(64, ge=1)
    pointwise_template: str | None = Field(
        None, description="Overrides the rubric prompt; use {prompt} and {response}."
    )


class SynthSettings(BaseModel):
    """Self-rewarded synthesis (see the README's synthesis section)."""

    model_config = ConfigDict(extra="forbid")

    prompts: int = Field(64, ge=1, description="Prompts per synthesis run.")
    n: int = Field(4, ge=2, description="Candidates per prompt.")
    temperature: float = Field(0.8, gt=0)
    max_new_tokens: int = Field(24, ge=1)
    sft_threshold: float = Field(0.8, ge=0, le=1)
    pair_margin: float = Field(0.3, ge=0, le=1)
    verifier_weight: float = Field(1.0, gt=0)
    judge_weight: float = Field(0.5, gt=0)
    agreement_floor: float = Field(0.6, ge=0, le=1)
    interaction_share: float = Field(
        0.5, ge=0, le=1, description="Share of prompts taken from recent interactions."
    )
    recent_interactions: int = Field(2000, ge=0, description="How far back 'recent' reaches.")
    self_instruct: int = Field(0, ge=0, description="New prompts the policy writes per run.")
    default_verifier: Literal["numeric", "exact", "normalized", "math", "none"] = Field(
        "numeric", description="Verifier for tasks outside the arith world with a reference."
    )


class WorldSettings(BaseModel):
    """The embedded arith world (used when model.base is empty)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    bootstrap_minutes: float = Field(3.0, gt=0)
    threads: int | None = Field(1, ge=1, description="Torch threads for the bootstrap.")
    release: dict[str, int] = Field(
        default_factory=lambda: {"add": 0, "sub": 1, "mul": 2},
        description="Cycle at which each task family is released.",
    )


class StageSettings(BaseModel):
    """Training settings of one stage (the stage module's config takes the rest from its
    own defaults)."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(100, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    per_device_batch_size: int = Field(16, ge=1)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    max_seconds: float | None = Field(600.0, gt=0, description="Wall-clock budget of the stage.")
    beta: float | None = Field(None, ge=0, description="DPO beta / RL KL coefficient.")
    num_generations: int | None = Field(None, ge=2, description="RL group size.")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Other fields of the stage's config, passed as is."
    )


class TrainSettings(BaseModel):
    """How stages run: processes and per-stage settings."""

    model_config = ConfigDict(extra="forbid")

    nproc: int = Field(1, ge=1, description="Training processes (torchrun on CPU).")
    launcher: Literal["auto", "python", "torchrun", "accelerate"] = "auto"
    accelerate_config: str | None = None
    timeout_s: float | None = Field(3600.0, gt=0)
    threads: int = Field(1, ge=1, description="torch threads per training process.")
    sft: StageSettings = StageSettings(max_steps=600, learning_rate=3e-3)
    dpo: StageSettings = StageSettings(max_steps=60, learning_rate=1e-3, beta=0.1)
    rl: StageSettings = StageSettings(
        max_steps=80,
        learning_rate=2e-4,
        beta=0.04,
        num_generations=8,
        per_device_batch_size=32,
        extra={"temperature": 0.7, "max_completion_length": 16},
    )


class GateSettings(BaseModel):
    """The lm-eval regression gate."""

    model_config = ConfigDict(extra="forbid")

    tolerance: float = Field(0.02, ge=0, description="A drop larger than this can be a regression.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the paired test.")
    require_gain: bool = Field(
        False, description="Promote only with a significant gain on the target tasks."
    )
    target_tasks: list[str] = Field(
        default_factory=list,
        description="Tasks a gain is required on (empty: any task gaining suffices).",
    )
    max_items: int | None = Field(200, ge=1, description="Held-out items per task.")
    backend: Literal["hf", "vllm"] = "hf"
    include_paths: list[str] = Field(
        default_factory=list, description="Extra lm-eval task folders (your own YAML tasks)."
    )
    extra_tasks: list[str] = Field(default_factory=list, description="Task names from them.")


class Settings(BaseSettings):
    """Everything configurable about one tutord installation."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file tutord.db in the home folder."
    )
    ingest: IngestSettings = IngestSettings()
    replay: ReplaySettings = ReplaySettings()
    adapters: AdapterSettings = AdapterSettings()
    model: ModelSettings = ModelSettings()
    judge: JudgeSettings = JudgeSettings()
    synth: SynthSettings = SynthSettings()
    world: WorldSettings = WorldSettings()
    curriculum: CurriculumSettings = CurriculumSettings()
    train: TrainSettings = TrainSettings()
    gate: GateSettings = GateSettings()

    toml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_file))
        return tuple(sources)


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def load_settings(home: Path, **overrides: Any) -> Settings:
    """Read `home/tutord.toml` (if present) and the environment into a `Settings`."""
    path = home / CONFIG_FILENAME
    toml_file: Path | None = None
    if path.exists():
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise SettingsError(f"{path}: not UTF-8 text: {exc}") from exc
        toml_file = path

    class _FromFile(Settings):
        pass

    _FromFile.toml_file = toml_file

    try:
        loaded = _FromFile(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = _location(err["loc"])
            env = ENV_PREFIX + key.upper().replace(".", "__")
            problems.append(f"key '{key}' (in {path} or ${env}): {err['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from exc
    return Settings.model_validate(loaded.model_dump())


DEFAULT_CONFIG = """\
# tutord configuration. Every key is optional; the values shown are the defaults.
# Environment variables override this file: TUTORD_<KEY>, nested keys joined by "__",
# e.g. TUTORD_DATABASE_URL or TUTORD_INGEST__BATCH_SIZE.

# SQLAlchemy URL of the database. Default: SQLite file tutord.db in this folder.
# database_url = "postgresql+psycopg://user@127.0.0.1:5432/tutord"

[ingest]
# Longest accepted JSONL line in bytes; longer lines go to quarantine/.
max_line_bytes = 1048576
# Records written per database transaction.
batch_size = 5000
# Source name recorded when `tutord ingest` is given no --source.
default_source = "default"

[replay]
# Share of each stage's dataset sampled (stratified by task) from earlier training data.
ratio = 0.25
# Most replay items kept per kind (sft, pair, prompt); the oldest items of the largest
# tasks go first, and every task keeps at least capacity / number of tasks (or all it has).
capacity = 200000

[adapters]
# Adapter versions kept by `tutord adapters prune` (production and its ancestors always are).
keep_last = 10

[model]
# Base model folder or hub id; empty: the embedded arith world (tutord world bootstrap).
base = ""
# Generation backend: transformers, vllm, or openai (a served model at server_url).
backend = "transformers"
# server_url = "http://127.0.0.1:8000"

[judge]
# Judge model; empty: the policy judges itself (self-rewarding).
base = ""
enabled = true
# Verdicts sampled and averaged per candidate.
k = 1
temperature = 0.7
max_new_tokens = 64
# pointwise_template = "... {prompt} ... {response} ... Score: <points>"

[synth]
prompts = 64
n = 4
temperature = 0.8
max_new_tokens = 24
sft_threshold = 0.8
pair_margin = 0.3
verifier_weight = 1.0
judge_weight = 0.5
agreement_floor = 0.6
interaction_share = 0.5
recent_interactions = 2000
self_instruct = 0
default_verifier = "numeric"

[curriculum]
# SFT while there are this many fresh SFT examples (or the policy cannot answer in format).
min_sft_examples = 32
competence_floor = 0.5
# DPO once SFT has run and this many fresh pairs exist.
min_pairs = 32
# RL once this many verifiable prompts are solved sometimes but not always.
min_rl_prompts = 16
# Allow RL on a policy that has had no SFT.
allow_rl_zero = false

[train]
# Training processes; more than 1 runs the stage under torchrun (gloo on CPU).
nproc = 1
launcher = "auto"
timeout_s = 3600.0
threads = 1
# Per stage: max_steps, learning_rate, per_device_batch_size, lora_r, lora_alpha,
# max_seconds, beta (DPO / RL KL), num_generations (RL), extra = { any stage config field }.
[train.sft]
max_steps = 600
learning_rate = 0.003
[train.dpo]
max_steps = 60
learning_rate = 0.001
beta = 0.1
[train.rl]
max_steps = 80
learning_rate = 0.0002
beta = 0.04
num_generations = 8
per_device_batch_size = 32
extra = { temperature = 0.7, max_completion_length = 16 }

[gate]
# A task regresses when the candidate is worse by more than `tolerance` and a paired
# test (McNemar) says p < alpha.
tolerance = 0.02
alpha = 0.05
require_gain = false
target_tasks = []
max_items = 200
backend = "hf"
# Your own lm-eval task folders and the task names to run from them.
include_paths = []
extra_tasks = []

[world]
seed = 0
bootstrap_minutes = 3.0
threads = 1
release = { add = 0, sub = 1, mul = 2 }
"""
