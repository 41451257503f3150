"""tutord's settings: a pydantic-settings model read from `tutord.toml` in the home folder.

Precedence, highest first: values passed in code, `TUTORD_*` environment variables
(nested keys joined by `__`, e.g. `TUTORD_INGEST__BATCH_SIZE`), `tutord.toml`, defaults.
Unknown keys and bad values raise `SettingsError`, whose message names the key (and the
file or the environment variable): also an unreadable file, an environment variable that
is not the JSON its table or list needs, and a `database_url` tutord cannot use (these
messages are built in `daemon/settings_env.py`).

The tables `[synth]`, `[train.sft]`, `[train.dpo]` and `[train.rl]` are the config
dataclasses themselves (`judges.synth.SynthConfig`, `stages.configs.*StageConfig`), validated
by pydantic; the fields tutord sets for each run (model, data, folders, version, seed,
threads) are refused there. `daemon/config_file.py` writes the commented default file from
these declarations. This module does not create the home folder (see `daemon/home.py`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as SourceError

from daemon.curriculum import CurriculumSettings
from daemon.service_settings import ServiceSettings
from daemon.settings_env import (
    ENV_PREFIX,
    environment_json_problems,
    per_run_problems,
    validation_problems,
)
from daemon.task_settings import TASK_NAME_PATTERN, TaskSettings
from judges.synth import SynthConfig
from replay.db import check_url
from stages.configs import DPOStageConfig, RLStageConfig, SFTStageConfig

CONFIG_FILENAME = "tutord.toml"


class SettingsError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


class IngestSettings(BaseModel):
    """How interaction logs are read."""

    model_config = ConfigDict(extra="forbid")

    max_line_bytes: int = Field(
        1_048_576,
        gt=0,
        description="Longest accepted JSONL line in bytes; longer lines go to quarantine/.",
    )
    batch_size: int = Field(
        5_000, gt=0, le=50_000, description="Records written per database transaction."
    )
    default_source: str = Field(
        "default",
        min_length=1,
        max_length=200,
        description="Source name recorded when `tutord ingest` is given no --source.",
    )


class ReplaySettings(BaseModel):
    """The replay buffer of earlier training data."""

    model_config = ConfigDict(extra="forbid")

    ratio: float = Field(
        0.25,
        ge=0,
        lt=1,
        description=(
            "Share of each stage's dataset sampled (stratified by task) from earlier training data."
        ),
    )
    rehearsal_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description=(
            "Share of each SFT dataset that is rehearsal rows (rehearsal_prompts), drawn on "
            "top of the replay sample, which then leaves them out: rehearsal keeps its weight "
            "however many tasks the replay is spread over (repeated when the buffer holds "
            "fewer). 0: rehearsal rows are replayed like any task's."
        ),
    )
    capacity: int = Field(
        200_000,
        gt=0,
        description=(
            "Most items kept per kind (sft, pair, prompt); the oldest items of the largest "
            "tasks go first, and every task keeps at least capacity / number of tasks (or all "
            "it has)."
        ),
    )
    rehearsal_prompts: str = Field(
        "",
        description=(
            "General prompts the base model (no adapter) answers once, greedily; its answers, "
            "cut to their last finished sentence, join the replay buffer as SFT rows of task "
            "'rehearsal' (self-synthesized rehearsal), so that every SFT stage replays what "
            "the model said before tutord touched it. "
            'A JSONL file of {"prompt": ...} lines (relative to the home), '
            "'shipped' for tutord's own 272 prompts, or empty: off."
        ),
    )
    rehearsal_max_new_tokens: int = Field(
        48,
        gt=0,
        le=512,
        description="Longest rehearsal answer; a cut-off one keeps its finished sentences.",
    )
    rehearsal_cut: Literal["sentence", "tokens"] = Field(
        "sentence",
        description=(
            "How a rehearsal answer cut off at rehearsal_max_new_tokens is kept: 'sentence', "
            "up to its last finished sentence (one with none is dropped), or 'tokens', as "
            "generated. 'tokens' only for rows taught by KL ([train.sft] distill_tasks = "
            "['rehearsal']): by cross-entropy an unfinished answer teaches stopping mid-sentence."
        ),
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
        "",
        description=(
            "An imported model's name (`tutord model import`) or a model folder; empty: the "
            "embedded arith world's base."
        ),
    )
    backend: BackendKind = Field("transformers", description="Generation backend.")
    server_url: str | None = Field(
        None,
        description="OpenAI-compatible server (backend 'openai').",
        examples=["http://127.0.0.1:8000"],
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch in this process (None: torch's default)."
    )


class JudgeSettings(BaseModel):
    """The LLM judge. Empty `base` means the policy judges itself (self-rewarding)."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(
        "",
        description=(
            "Judge model: an imported model's name or a model folder (a served model's name "
            "with backend 'openai'); empty: the policy itself."
        ),
    )
    backend: BackendKind = Field("transformers", description="Generation backend of the judge.")
    server_url: str | None = Field(
        None,
        description="OpenAI-compatible server of the judge (backend 'openai').",
        examples=["http://127.0.0.1:8001"],
    )
    enabled: bool = Field(True, description="Score candidates with the judge at all.")
    k: int = Field(1, ge=1, description="Verdicts sampled and averaged per candidate.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature of the verdicts.")
    max_new_tokens: int = Field(64, ge=1, description="Longest verdict in tokens.")
    verdict: Literal["text", "probabilities"] = Field(
        "text",
        description=(
            "How a verdict is read: 'text' generates it and parses 'Score: N' (abstaining "
            "when there is none); 'probabilities' prefills 'Score: ' and takes the expected "
            "points under the judge's probabilities of 0-5 (backend 'transformers' only)."
        ),
    )
    pointwise_template: str | None = Field(
        None,
        description="Overrides the rubric prompt; use {prompt} and {response}.",
        examples=["... {prompt} ... {response} ... Score: <points>"],
    )


class WorldSettings(BaseModel):
    """The embedded arith world (used when model.base is empty)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    bootstrap_minutes: float = Field(
        30.0, gt=0, description="Wall-clock cap of `tutord world bootstrap`."
    )
    bootstrap_steps: int | None = Field(
        2000,
        ge=1,
        description="Pretraining steps (empty: train until bootstrap_minutes run out). With "
        "the defaults the model shipped in the package is copied instead of trained.",
    )
    threads: int | None = Field(1, ge=1, description="Torch threads for the bootstrap.")
    release: dict[str, int] = Field(
        default_factory=lambda: {"add": 0, "sub": 1, "mul": 2},
        description="Cycle at which each task family is released.",
    )


class TrainSettings(BaseModel):
    """How stages run: processes and per-stage settings."""

    model_config = ConfigDict(extra="forbid")

    nproc: int = Field(
        1, ge=1, description="Training processes; more than 1 runs under torchrun (gloo on CPU)."
    )
    launcher: Literal["auto", "python", "torchrun", "accelerate"] = Field(
        "auto",
        description="auto: python for one process, torchrun for several; accelerate for GPUs.",
    )
    accelerate_config: str | None = Field(
        None,
        description="`accelerate launch --config_file` (DDP, FSDP, DeepSpeed settings).",
        examples=["/etc/tutord/accelerate.yaml"],
    )
    timeout_s: float | None = Field(
        3600.0, gt=0, description="A stage running longer is killed (and resumed next cycle)."
    )
    threads: int = Field(1, ge=1, description="torch threads per training process.")
    sft: SFTStageConfig = Field(
        default_factory=SFTStageConfig,
        description=(
            "The SFT stage: any field of stages/configs.py's SFTStageConfig but those tutord "
            "sets for each run."
        ),
    )
    dpo: DPOStageConfig = Field(
        default_factory=DPOStageConfig,
        description=(
            "The DPO stage: any field of stages/configs.py's DPOStageConfig but those tutord "
            "sets for each run."
        ),
    )
    rl: RLStageConfig = Field(
        default_factory=RLStageConfig,
        description=(
            "The RL (GRPO) stage: any field of stages/configs.py's RLStageConfig but those tutord "
            "sets for each run."
        ),
    )


class GateSettings(BaseModel):
    """The lm-eval regression gate."""

    model_config = ConfigDict(extra="forbid")

    tolerance: float = Field(
        0.05,
        ge=0,
        description=(
            "A task regresses when the candidate is worse by more than this and the paired "
            "test says p < alpha."
        ),
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="Significance level of the paired test (McNemar)."
    )
    require_gain: bool = Field(
        False, description="Promote only with a significant gain on the target tasks."
    )
    target_tasks: list[str] = Field(
        default_factory=list,
        description="Tasks a gain is required on (empty: any task gaining suffices).",
    )
    block_unseen: bool = Field(
        True,
        description=(
            "Refuse a candidate when a task's items could not detect a drop of the tolerance "
            "(80% power at alpha) and it neither regressed nor gained: 'cannot tell'."
        ),
    )
    anchor_tasks: list[str] = Field(
        default_factory=list,
        description=(
            "Tasks gated against the base model as well as production (the same rules), so "
            "that losses within the tolerance cannot add up over promotions."
        ),
    )
    max_items: int | None = Field(
        600, ge=1, description="Held-out items per task (all of them when a task has fewer)."
    )
    backend: Literal["hf", "vllm"] = Field("hf", description="lm-eval model backend.")
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
        None,
        description="SQLAlchemy URL; default: SQLite file tutord.db in the home folder.",
        examples=["postgresql+psycopg://user@127.0.0.1:5432/tutord"],
    )
    ingest: IngestSettings = IngestSettings()
    replay: ReplaySettings = ReplaySettings()
    adapters: AdapterSettings = AdapterSettings()
    model: ModelSettings = ModelSettings()
    judge: JudgeSettings = JudgeSettings()
    synth: SynthConfig = Field(
        default_factory=SynthConfig,
        description="Self-rewarded synthesis: any field of judges/synth.py's SynthConfig.",
    )
    world: WorldSettings = WorldSettings()
    curriculum: CurriculumSettings = CurriculumSettings()
    train: TrainSettings = TrainSettings()
    gate: GateSettings = GateSettings()
    service: ServiceSettings = ServiceSettings()
    task_packs: list[Literal["arith"]] | None = Field(
        None,
        description=(
            "Built-in task packs to use; None: the embedded world's tasks when model.base is "
            "empty, none otherwise."
        ),
    )
    tasks: dict[Annotated[str, StringConstraints(pattern=TASK_NAME_PATTERN)], TaskSettings] = Field(
        default_factory=dict, description="Your own tasks: [tasks.NAME] tables."
    )

    toml_file: ClassVar[Path | None] = None

    @field_validator("database_url")
    @classmethod
    def _usable_database_url(cls, value: str | None) -> str | None:
        if value:
            check_url(value)  # DatabaseURLError is a ValueError: pydantic names the key
        return value

    @model_validator(mode="after")
    def _judge_can_read_probabilities(self) -> Settings:
        judge_backend = self.judge.backend if self.judge.base else self.model.backend
        if self.judge.verdict == "probabilities" and judge_backend != "transformers":
            raise ValueError(
                f"judge.verdict 'probabilities' needs the transformers backend, and the judge "
                f"runs on {judge_backend!r} "
                f"({'judge.backend' if self.judge.base else 'model.backend: the policy judges'})"
            )
        return self

    @model_validator(mode="after")
    def _unfinished_rehearsal_only_by_kl(self) -> Settings:
        if (
            self.replay.rehearsal_cut == "tokens"
            and "rehearsal" not in self.train.sft.distill_tasks
        ):
            raise ValueError(
                "replay.rehearsal_cut 'tokens' keeps answers cut off mid-sentence, which only "
                "rows taught by KL may hold: add 'rehearsal' to [train.sft] distill_tasks"
            )
        return self

    @model_validator(mode="after")
    def _protected_rehearsal_is_made(self) -> Settings:
        if "rehearsal" in self.train.sft.protect_tasks and not self.replay.rehearsal_prompts:
            raise ValueError(
                "[train.sft] protect_tasks names 'rehearsal', but no rehearsal rows are made: "
                "set replay.rehearsal_prompts, or leave 'rehearsal' out of protect_tasks"
            )
        return self

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


def load_settings(home: Path, **overrides: Any) -> Settings:
    """Read `home/tutord.toml` (if present) and the environment into a `Settings`."""
    path = home / CONFIG_FILENAME
    toml_file: Path | None = None
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise SettingsError(f"{path}: not UTF-8 text: {exc}") from exc
        except OSError as exc:  # a folder, no permission, ...
            raise SettingsError(f"{path}: cannot read the configuration: {exc.strerror}") from exc
        toml_file = path
    problems = per_run_problems(path, data, Settings)

    class _FromFile(Settings):
        pass

    _FromFile.toml_file = toml_file

    try:
        loaded = _FromFile(**overrides)
    except SourceError as exc:  # an environment variable that is not the JSON it must be
        problems.extend(environment_json_problems(exc, path))
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from exc
    except ValidationError as exc:
        problems.extend(validation_problems(exc, path, Settings))
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from exc
    if problems:
        raise SettingsError("invalid configuration: " + "; ".join(problems))
    return Settings.model_validate(loaded.model_dump())
