"""Settings: defaults, tutord.toml, TUTORD_* overrides, errors that name the key; the
generated default file; the stage and synthesis tables validated against their dataclasses."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path

import pytest

from daemon.config_file import default_config, keys
from daemon.home import Home, resolve_home
from daemon.settings import Settings, SettingsError, load_settings
from judges.synth import SynthConfig
from stages.configs import STAGE_CONFIGS, per_run_fields
from stages.stage_io import load_config, write_config


def test_defaults_without_a_file(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)
    assert settings.database_url is None
    assert settings.ingest.batch_size == 5000
    assert Home(tmp_path).database_url(settings) == f"sqlite:///{tmp_path / 'tutord.db'}"


def test_the_default_file_is_valid_and_says_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "tutord.toml").write_text(default_config())
    assert load_settings(tmp_path) == load_settings(tmp_path / "nowhere") == Settings()
    # The file written by `tutord init` is the generated one.
    Home(tmp_path / "h").create()
    assert (tmp_path / "h" / "tutord.toml").read_text() == default_config()


def _listed_keys(text: str) -> set[str]:
    """The dotted keys of `key = value` lines, commented out or not, under their tables."""
    found, table = set(), ""
    for line in text.splitlines():
        bare = line.removeprefix("# ")
        if re.fullmatch(r"\[[\w.]+\]", bare):
            table = bare[1:-1] + "."
        elif match := re.fullmatch(r"([\w-]+) = .+", bare):
            found.add(table + match[1])
    return found


def test_the_default_file_lists_every_key_with_its_description() -> None:
    text = default_config()
    listed = _listed_keys(text)
    assert listed == set(keys())
    parsed = tomllib.loads(text)
    assert parsed["train"]["rl"]["max_steps"] == 80 and "seed" not in parsed["synth"]
    for key in ("train.sft.max_steps", "train.rl.max_completion_length", "synth.max_new_tokens"):
        assert key in listed
    # Per-run fields are no keys; every stage and synthesis field but those is one.
    for stage, cls in STAGE_CONFIGS.items():
        fixed = per_run_fields(cls)
        assert {"base_model", "train_file", "output_dir", "version", "seed"} <= set(fixed)
        for f in dataclasses.fields(cls):
            assert (f"train.{stage}.{f.name}" in listed) == (f.name not in fixed)
    assert "synth.seed" not in listed and "synth.prompts" in listed
    # Descriptions come from the declarations (attribute docstrings of the dataclasses).
    assert "# Completions sampled per prompt (the group whose rewards are compared).\n" in text
    assert "num_generations = 8\n" in text and "max_new_tokens = 24\n" in text


def test_one_default_per_field() -> None:
    settings = Settings()
    assert settings.synth == SynthConfig() and settings.synth.max_new_tokens == 24
    sft, dpo, rl = settings.train.sft, settings.train.dpo, settings.train.rl
    assert (sft.max_steps, sft.learning_rate) == (600, 3e-3)
    assert (dpo.max_steps, dpo.learning_rate, dpo.beta) == (60, 1e-3, 0.1)
    assert (rl.max_steps, rl.learning_rate, rl.beta, rl.num_generations) == (80, 2e-4, 0.04, 8)
    assert (rl.per_device_batch_size, rl.temperature, rl.max_completion_length) == (32, 0.7, 16)


@pytest.mark.parametrize("stage", sorted(STAGE_CONFIGS))
def test_every_default_is_a_valid_stage_config(stage: str, tmp_path: Path) -> None:
    configured = getattr(load_settings(tmp_path).train, stage)
    assert type(configured) is STAGE_CONFIGS[stage]
    run = dataclasses.replace(
        configured,
        base_model="b",
        train_file="t.jsonl",
        output_dir=str(tmp_path / "out"),
        adapters_dir=str(tmp_path / "adapters"),
        version=2,
        seed=5,
    )
    path = write_config(run, tmp_path / f"{stage}.json")
    assert load_config(STAGE_CONFIGS[stage], path) == run
    assert load_config(STAGE_CONFIGS[stage], write_config(configured, path)) == configured


def test_stage_and_synth_tables_set_their_dataclasses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tutord.toml").write_text(
        "[synth]\nn = 6\ntop_p = 0.9\n"
        '[train.sft]\nmax_steps = 5\ntarget_modules = ["q_proj"]\nprecision = "float32"\n'
        "[train.rl]\nmax_completion_length = 4\nreward_weights = [1.0, 0.5]\n"
    )
    monkeypatch.setenv("TUTORD_TRAIN__DPO__BETA", "0.3")
    settings = load_settings(tmp_path)
    assert (settings.synth.n, settings.synth.top_p, settings.synth.prompts) == (6, 0.9, 64)
    assert settings.train.sft.target_modules == ("q_proj",)
    assert (settings.train.sft.max_steps, settings.train.sft.learning_rate) == (5, 3e-3)
    assert settings.train.rl.reward_weights == (1.0, 0.5)
    assert settings.train.dpo.beta == 0.3


@pytest.mark.parametrize("table", ["train.sft", "train.dpo", "train.rl", "synth"])
def test_a_bad_key_in_a_stage_or_synth_table_is_refused(table: str, tmp_path: Path) -> None:
    cases = [
        ("bogus = 1", f"key '{table}.bogus'", "unknown key"),
        ('max_new_tokens = "lots"' if table == "synth" else 'max_steps = "lots"', "", "valid"),
        ("seed = 3", f"key '{table}.seed'", "tutord sets this for each run"),
    ]
    for line, needle, why in cases:
        needle = needle or f"key '{table}.{line.split(' = ')[0]}'"
        (tmp_path / "tutord.toml").write_text(f"[{table}]\n{line}\n")
        with pytest.raises(SettingsError) as info:
            load_settings(tmp_path)
        assert needle in str(info.value) and why in str(info.value), str(info.value)
        assert str(tmp_path / "tutord.toml") in str(info.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[train.sft]\nmax_steps = 0\n", "key 'train.sft.max_steps'"),
        ("[train.rl]\nnum_generations = 1\n", "key 'train.rl.num_generations'"),
        ('[train.dpo]\nprecision = "fp16"\n', "key 'train.dpo.precision'"),
        ("[synth]\nn = 1\n", "key 'synth.n'"),
        ("[synth]\nsft_threshold = 1.5\n", "key 'synth.sft_threshold'"),
        ('[train.rl]\nbase_model = "/m"\n', "key 'train.rl.base_model'"),
        ("[train.sft]\nthreads = 2\n", "from train.threads"),
        ("[train.sft]\nextra = {}\n", "key 'train.sft.extra'"),
    ],
)
def test_bad_stage_values_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "tutord.toml").write_text(text)
    with pytest.raises(SettingsError, match="invalid configuration") as info:
        load_settings(tmp_path)
    assert needle in str(info.value)


def test_per_run_fields_are_refused_from_the_environment_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUTORD_TRAIN__RL__OUTPUT_DIR", "/tmp/x")
    with pytest.raises(SettingsError, match=r"train\.rl\.output_dir.*TUTORD_TRAIN__RL__OUTPUT_DIR"):
        load_settings(tmp_path)
    monkeypatch.delenv("TUTORD_TRAIN__RL__OUTPUT_DIR")
    monkeypatch.setenv("TUTORD_SYNTH__SEED", "4")
    with pytest.raises(SettingsError, match=r"synth\.seed"):
        load_settings(tmp_path)


def test_file_then_environment_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tutord.toml").write_text(
        'database_url = "sqlite:////tmp/x.db"\n[ingest]\nbatch_size = 10\nmax_line_bytes = 99\n'
    )
    monkeypatch.setenv("TUTORD_INGEST__BATCH_SIZE", "20")
    settings = load_settings(tmp_path)
    assert settings.ingest.batch_size == 20
    assert settings.ingest.max_line_bytes == 99
    assert settings.database_url == "sqlite:////tmp/x.db"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[ingest]\nbatch_size = 0\n", "key 'ingest.batch_size'"),
        ("[ingest]\nbatch_sise = 5\n", "key 'ingest.batch_sise'"),
        ("unknown_top = 1\n", "key 'unknown_top'"),
        ('[replay]\ncapacity = "lots"\n', "key 'replay.capacity'"),
        ("[ingest\n", "not valid TOML"),
        ('[judge]\nverdict = "logits"\n', "key 'judge.verdict'"),
        (
            '[model]\nbackend = "vllm"\n[judge]\nverdict = "probabilities"\n',
            "judge.verdict 'probabilities' needs the transformers backend, and the judge "
            "runs on 'vllm' (model.backend",
        ),
    ],
)
def test_invalid_file_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "tutord.toml").write_text(text)
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path)
    assert needle in str(info.value)
    assert str(tmp_path / "tutord.toml") in str(info.value)


def test_invalid_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUTORD_INGEST__MAX_LINE_BYTES", "-1")
    with pytest.raises(SettingsError, match=r"TUTORD_INGEST__MAX_LINE_BYTES"):
        load_settings(tmp_path)


def test_home_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUTORD_HOME", str(tmp_path / "env"))
    assert resolve_home(tmp_path / "cli").root == tmp_path / "cli"
    assert resolve_home(None).root == tmp_path / "env"
    monkeypatch.delenv("TUTORD_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_home(None).root == tmp_path / ".local/share/tutord"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[tasks.successor]\ngrader = "numeric"\nbogus = 1\n', "key 'tasks.successor.bogus'"),
        ('[tasks.successor]\ngrader = "fuzzy"\n', "key 'tasks.successor.grader'"),
        ('[tasks.successor]\ngrader = "regex:[0-9"\n', "key 'tasks.successor.grader'"),
        ("[tasks.successor]\nheldout_percent = 120\n", "key 'tasks.successor.heldout_percent'"),
        ('[tasks."no spaces"]\ngrader = "exact"\n', "key 'tasks.no spaces"),
        ('task_packs = ["chess"]\n', "key 'task_packs.0'"),
    ],
)
def test_a_bad_task_table_is_refused_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "tutord.toml").write_text(text)
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path)
    assert needle in str(info.value), str(info.value)


def test_a_declared_task_loads_with_its_items_and_split(tmp_path: Path) -> None:
    from daemon.home import Home
    from daemon.tasks import TaskError, load_tasks

    rows = [{"prompt": f"What comes after {i}?", "reference": str(i + 1)} for i in range(200)]
    (tmp_path / "succ.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tutord.toml").write_text(
        'task_packs = []\n[tasks.successor]\ngrader = "numeric"\nprompts = "succ.jsonl"\n'
        "heldout_percent = 20\n"
    )
    home = Home(tmp_path)
    tasks = load_tasks(home, load_settings(tmp_path), step=0)
    assert list(tasks) == ["successor"]
    task = tasks["successor"]
    heldout = {item.text for item in task.heldout()}
    pool = {item.text for item in task.pool(500, 0)}
    assert 25 <= len(heldout) <= 55 and len(heldout) + len(pool) == 200
    assert not heldout & pool
    some_heldout, some_train = sorted(heldout)[0], sorted(pool)[0]
    assert task.is_heldout("  " + some_heldout.replace(" ", "  "))  # matched by normalized text
    assert not task.is_heldout(some_train)
    (tmp_path / "succ.jsonl").write_text(
        '{"prompt": "What comes after 1?", "reference": "2"}\n{"prompt": 3}\n'
    )
    with pytest.raises(TaskError, match=r"succ\.jsonl:2: reference"):
        load_tasks(home, load_settings(tmp_path), step=0)
