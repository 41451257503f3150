"""The DPO stage on the world's tiny random model: the reference is the production policy (the
frozen parent adapter, or the base when there is none), the adapter trains, the base does
not, and a run resumed from a checkpoint ends where an uninterrupted one does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from stages import dpo, registry
from stages.generate.api import AdapterRef
from stages.generate.hf import TransformersBackend
from tests.stages.test_stage_support import (
    adapter_weights,
    base_params_unchanged,
    check_published,
    check_result_file,
    dpo_rows,
    folder_digest,
    make_world,
    stage_config,
    train_fresh_lora,
    weights_differ,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("dpo-world"), parent=True, train=dpo_rows(32))


def config(world: dict[str, Path], out: Path, **kw: object) -> dpo.DPOStageConfig:
    """Three steps to candidate v2; `kw` overrides fields."""
    return stage_config(dpo.DPOStageConfig, world, out, **{"version": 2, "max_steps": 3, **kw})


def _reference_logps(trainer: object, rows: int) -> torch.Tensor:
    """TRL's own reference log-probs of the chosen completions of the first `rows` rows."""
    dataset = trainer.train_dataset  # type: ignore[attr-defined]
    batch = trainer.data_collator([dataset[i] for i in range(rows)])  # type: ignore[attr-defined]
    chosen, _ = trainer.compute_ref_log_probs(trainer.model, batch)  # type: ignore[attr-defined]
    return chosen.detach()


def test_reference_is_the_frozen_parent_adapter(world: dict[str, Path], tmp_path: Path) -> None:
    before = folder_digest(world["base"])
    parent_weights = adapter_weights(world["parent"])
    # sft_weight 0: plain DPO, whose first loss is ln 2 exactly when policy == reference
    cfg = config(world, tmp_path, parent_adapter=str(world["parent"]), sft_weight=0.0)
    session = dpo.setup(cfg)
    assert session.reference == "ref-adapter"
    trainer = session.run.trainer

    # TRL's reference log-probs equal the production policy's (base + parent adapter), as
    # the generation backend scores them, and not the bare base's.
    rows = dpo_rows(4)
    prompts = [r["prompt"] for r in rows]
    completions = [r["chosen"][0]["content"] for r in rows]
    backend = TransformersBackend(world["base"], device="cpu")
    parent = [
        sum(x)
        for x in backend.token_logprobs(prompts, completions, AdapterRef("v1", world["parent"]))
    ]
    bare = [sum(x) for x in backend.token_logprobs(prompts, completions)]
    backend.close()
    ref = _reference_logps(trainer, 4)
    assert torch.allclose(ref, torch.tensor(parent), atol=1e-4), (ref, parent)
    assert not torch.allclose(ref, torch.tensor(bare), atol=1e-2)

    result = dpo.train(session)
    assert base_params_unchanged(trainer.model, world["base"])
    # The reference stayed the parent: TRL's "ref" copy never trained.
    from peft import get_peft_model_state_dict

    ref_state = get_peft_model_state_dict(trainer.model, adapter_name="ref")
    assert set(ref_state) == set(parent_weights)
    assert all(torch.equal(ref_state[k], parent_weights[k]) for k in parent_weights)
    assert torch.allclose(_reference_logps(trainer, 4), ref, atol=1e-6)
    dpo.cleanup(session)

    assert result.loss_curve[0][1] == pytest.approx(0.6931, abs=1e-3)  # policy == reference
    check_result_file(Path(cfg.output_dir))
    check_published(result, "dpo", parent=1)
    assert weights_differ(adapter_weights(Path(result.adapter_path or "")), parent_weights)
    assert folder_digest(world["base"]) == before


def test_fresh_lora_uses_the_base_as_reference(world: dict[str, Path], tmp_path: Path) -> None:
    before = folder_digest(world["base"])
    weights = train_fresh_lora(dpo, config(world, tmp_path, version=1))
    assert all(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)
    assert folder_digest(world["base"]) == before


def test_resumed_run_matches_an_uninterrupted_one(world: dict[str, Path], tmp_path: Path) -> None:
    """With a parent, checkpoints hold the trained adapter and TRL's "ref" copy; resuming must
    restore the trained weights (transformers alone restores only the "ref" subfolder)."""
    common = {
        "parent_adapter": str(world["parent"]),
        "adapters_dir": None,
        "version": None,
        "lr_scheduler_type": "constant",
        "learning_rate": 1e-2,
        "max_steps": 4,
    }
    whole = dpo.run(config(world, tmp_path / "whole", **common))
    assert whole.ok and whole.resumed_from is None

    cut = config(world, tmp_path / "cut", **{**common, "max_steps": 2, "keep_checkpoints": True})
    first = dpo.run(cut)
    assert first.ok and first.steps == 2
    (Path(cut.output_dir) / "result.json").unlink()  # as if it had been killed after the save
    second = dpo.run(dataclasses.replace(cut, max_steps=4))
    assert second.ok and second.steps == 4
    assert second.resumed_from is not None and second.resumed_from.endswith("checkpoint-2")
    assert [s for s, _ in second.loss_curve] == [3, 4]
    resumed_losses = [loss for _, loss in second.loss_curve]
    assert resumed_losses == pytest.approx([loss for _, loss in whole.loss_curve[2:]], abs=1e-5)
    a = adapter_weights(Path(whole.adapter_path or ""))
    b = adapter_weights(Path(second.adapter_path or ""))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert registry.list_versions(tmp_path / "whole" / "adapters") == []


def test_sft_weight_adds_an_nll_term_on_the_chosen_answers(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """The default (RPO): TRL combines the DPO loss with an NLL loss on the chosen answers,
    so the first loss (policy == reference) is ln 2 plus that NLL, not ln 2."""
    cfg = config(world, tmp_path, parent_adapter=str(world["parent"]), max_steps=1)
    assert cfg.sft_weight == 1.0
    session = dpo.setup(cfg)
    try:
        args = session.run.trainer.args
        assert (args.loss_type, args.loss_weights) == (["sigmoid", "sft"], [1.0, 1.0])
        result = dpo.train(session)
    finally:
        dpo.cleanup(session)
    assert result.loss_curve[0][1] > 0.6931 + 0.05
