"""A very short bootstrap: a loadable model folder, its loss curve and manifest, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from daemon.cli import app
from world import pretrain as pretrain_module
from world.pretrain import bootstrap, read_manifest
from world.probe import chat_completions, raw_accuracy
from world.tasks import get_family


@pytest.mark.slow
def test_short_bootstrap_writes_a_loadable_cached_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "base"
    assert bootstrap(out, minutes=0.05, seed=0, threads=1) == out
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "llama"
    assert (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no temporary folder left

    curve = json.loads((out / "loss_curve.json").read_text())
    assert curve and all({"step", "loss"} <= set(point) for point in curve)
    manifest = read_manifest(out)
    assert manifest is not None
    assert manifest["settings"]["seed"] == 0 and manifest["settings"]["minutes"] == 0.05
    result = manifest["result"]
    assert result["steps"] >= 1 and result["parameters"] == model.num_parameters()
    assert result["final_loss"] is not None

    family = get_family("add")
    problems = family.sample_problems(4, seed=0, split="heldout")
    assert 0.0 <= raw_accuracy(model, tok, family, problems) <= 1.0
    assert len(chat_completions(model, tok, problems)) == 4

    # Same settings: cached, no training.
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("retrained a cached model")

    monkeypatch.setattr(pretrain_module, "_train", no_training)
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert bootstrap(out, minutes=0.05, seed=0) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    home = str(tmp_path / "home")
    args = ["--home", home, "world", "bootstrap", "--out", str(out), "--minutes", "0.05"]
    cli = CliRunner().invoke(app, args)
    assert cli.exit_code == 0, cli.output
    assert "cached" in cli.stdout and str(out) in cli.stdout
    # Other settings: not cached.
    with pytest.raises(AssertionError, match="retrained"):
        bootstrap(out, minutes=0.05, seed=1)
    assert read_manifest(out) == manifest  # the failed run left the old model in place


def test_read_manifest_of_incomplete_folder(tmp_path: Path) -> None:
    (tmp_path / "bootstrap.json").write_text("{}")
    assert read_manifest(tmp_path) is None
    with pytest.raises(ValueError):
        bootstrap(tmp_path / "x", minutes=0)


@pytest.mark.slow
def test_bootstrap_is_reproducible_with_max_steps(tmp_path: Path) -> None:
    first = bootstrap(tmp_path / "a", minutes=2, seed=4, max_steps=4, threads=1)
    second = bootstrap(tmp_path / "b", minutes=2, seed=4, max_steps=4, threads=1)
    for name in ("model.safetensors", "loss_curve.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert read_manifest(first)["result"]["steps"] == 4  # type: ignore[index]


@pytest.mark.slow
def test_the_calling_process_cannot_change_the_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training runs in a fresh process with AVX2 numerics pinned: a caller whose torch
    uses other kernels, threads or dtype still gets the same weights."""
    import torch

    reference = bootstrap(tmp_path / "a", minutes=2, seed=4, max_steps=6, threads=1)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")  # no vector kernels, if it mattered
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float64)
    try:
        other = bootstrap(tmp_path / "b", minutes=2, seed=4, max_steps=6, threads=1)
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    assert (other / "model.safetensors").read_bytes() == (
        reference / "model.safetensors"
    ).read_bytes()
    numerics = read_manifest(other)["numerics"]  # type: ignore[index]
    assert numerics["cpu_capability"] == "AVX2" and numerics["threads"] == 1
    assert numerics["ATEN_CPU_CAPABILITY"] == "avx2" and numerics["MKL_CBWR"] == "AVX2"
