"""Drift: the KL estimate between policies on the tiny model, snapshots, and the report files
(JSON series for every version; a self-contained HTML page with the summary first)."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest

from evals.drift import (
    VersionDrift,
    divergence,
    length_histogram,
    snapshot_from_run,
    token_kl,
)
from evals.drift_report import summarize, write_report
from evals.evaluation import Evaluation, TaskScore
from stages.generate.api import AdapterRef

PROBE_PROMPTS = [
    [{"role": "user", "content": "What is 3+4?"}],
    [{"role": "user", "content": "Compute 12 minus 5."}],
    [{"role": "user", "content": "7 * 6 = ?"}],
]

# -- divergence ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend(world_model_dir: Path):
    from stages.generate.hf import TransformersBackend

    b = TransformersBackend(world_model_dir, device="cpu")
    yield b
    b.close()


def test_token_kl_estimators() -> None:
    assert token_kl([-1.0, -0.5], [-1.0, -0.5], "k1") == [0.0, 0.0]
    assert token_kl([-1.0, -0.5], [-1.0, -0.5], "k3") == [0.0, 0.0]
    k3 = token_kl([-0.1, -3.0], [-2.0, -0.2], "k3")
    assert all(v > 0 for v in k3)  # k3 is never negative, k1 can be
    assert token_kl([-3.0], [-0.2], "k1")[0] < 0
    with pytest.raises(ValueError):
        token_kl([-1.0], [-1.0, -2.0], "k3")


def test_kl_is_zero_for_identical_policies(
    world_model_dir: Path, backend, world_adapter: AdapterRef
) -> None:
    probe = [(chat, None) for chat in PROBE_PROMPTS]  # completions sampled from A
    assert divergence(world_model_dir, None, None, probe, backend=backend) == 0.0
    assert divergence(world_model_dir, world_adapter, world_adapter, probe, backend=backend) == 0.0
    fixed = [(chat, "7") for chat in PROBE_PROMPTS]
    for estimator in ("k1", "k3"):
        assert divergence(
            world_model_dir, None, None, fixed, backend=backend, estimator=estimator
        ) == pytest.approx(0.0, abs=1e-12)


def test_kl_grows_when_the_adapter_changes(
    world_model_dir: Path,
    backend,
    world_adapter: AdapterRef,
    other_world_adapter: AdapterRef,
) -> None:
    probe = [(chat, None) for chat in PROBE_PROMPTS]
    from_base = divergence(world_model_dir, world_adapter, None, probe, backend=backend, seed=1)
    between = divergence(
        world_model_dir, world_adapter, other_world_adapter, probe, backend=backend, seed=1
    )
    assert from_base > 0 and between > 0
    assert math.isfinite(from_base) and math.isfinite(between)
    # the same seed samples the same completions: the estimate is reproducible
    again = divergence(world_model_dir, world_adapter, None, probe, backend=backend, seed=1)
    assert again == pytest.approx(from_base, rel=1e-9)
    # k1 on the same samples is a different, also positive-in-expectation, estimate
    k1 = divergence(
        world_model_dir, world_adapter, None, probe, backend=backend, seed=1, estimator="k1"
    )
    assert math.isfinite(k1)


def test_divergence_loads_its_own_backend(world_model_dir: Path, world_adapter: AdapterRef) -> None:
    probe = [(PROBE_PROMPTS[0], "3+4=7"), (PROBE_PROMPTS[1], None)]
    assert divergence(world_model_dir, world_adapter, None, probe, max_new_tokens=6) > 0
    with pytest.raises(ValueError):
        divergence(world_model_dir, None, None, [])


# -- snapshots and the report ----------------------------------------------------------------


def test_length_histogram() -> None:
    assert length_histogram([0, 1, 2, 3, 9, 5000], edges=(0, 2, 8)) == ((0, 2, 8), (2, 2, 2))
    edges, counts = length_histogram([])
    assert sum(counts) == 0 and len(edges) == len(counts)
    with pytest.raises(ValueError):
        length_histogram([1], edges=(4, 2))


def eval_run(scores: dict[str, list[float]], responses: list[str]) -> Evaluation:
    tasks = {}
    for name, values in scores.items():
        ids = [f"{name}-{i}" for i in range(len(values))]
        tasks[name] = TaskScore(
            task=name,
            metric="exact_match",
            filter="none",
            score=sum(values) / len(values),
            stderr=0.05,
            n=len(values),
            items=dict(zip(ids, values, strict=True)),
            responses=dict(zip(ids, responses, strict=False)),
        )
    return Evaluation(
        base_model="base",
        adapter_name="v1",
        adapter_hash="h",
        base_fingerprint="b",
        suite_hash="s",
        settings_hash="c",
        backend="hf",
        tasks=tasks,
        lm_eval_version="0.4.13",
        created_at="2026-01-01T00:00:00+00:00",
    )


def test_snapshot_from_run_and_round_trip() -> None:
    run = eval_run({"add": [1, 0, 0, 1]}, ["7", "3+4=7", "eight", "10"])
    snap = snapshot_from_run(
        "v1", run, kl_from_base=0.3, judge_score_mean=0.6, traffic_mix={"add": 3, "sub": 1}
    )
    assert snap.task_scores == {"add": 0.5}
    assert snap.response_length_mean == pytest.approx((1 + 5 + 5 + 2) / 4)
    assert sum(snap.length_counts) == 4
    assert VersionDrift.from_dict(json.loads(json.dumps(snap.to_dict()))) == snap
    assert snap.traffic_distance is None  # no training mix to compare with
    with pytest.raises(TypeError):
        snap.task_scores["add"] = 1.0  # type: ignore[index]


def snapshots() -> list[VersionDrift]:
    edges = (0, 2, 4, 8, 16)
    return [
        VersionDrift(
            "base",
            task_scores={"add": 0.12, "sub": 0.30},
            task_metrics={"add": "exact-match", "sub": "exact-match"},
            response_length_mean=10.0,
            length_edges=edges,
            length_counts=(0, 2, 10, 6, 2),
            kl_from_base=0.0,
        ),
        VersionDrift(
            "v1",
            task_scores={"add": 0.25, "sub": 0.31},
            task_metrics={"add": "exact-match", "sub": "exact-match"},
            response_length_mean=9.0,
            length_edges=edges,
            length_counts=(0, 4, 10, 5, 1),
            kl_from_base=0.3,
            kl_from_previous=0.3,
            judge_score_mean=0.5,
            judge_verifier_agreement=0.7,
            judge_balanced_agreement=0.5,
            traffic_mix={"add": 0.8, "sub": 0.2},
            training_mix={"add": 0.7, "sub": 0.3},
            feedback_rates={"thumbs_up": 0.3, "thumbs_down": 0.1},
            events=({"kind": "promotion", "version": "v1", "at": "2026-01-02T00:00:00Z"},),
        ),
        VersionDrift(
            "v2",
            task_scores={"add": 0.41, "sub": 0.29, "mul": 0.05},
            task_metrics={"add": "exact-match", "sub": "exact-match", "mul": "exact-match"},
            response_length_mean=7.2,
            length_edges=edges,
            length_counts=(1, 8, 9, 2, 0),
            kl_from_base=0.8,
            kl_from_previous=0.4,
            judge_score_mean=0.62,
            judge_verifier_agreement=0.75,
            judge_balanced_agreement=0.8,
            traffic_mix={"add": 0.5, "sub": 0.2, "mul": 0.3},
            training_mix={"add": 0.7, "sub": 0.3},
            feedback_rates={"thumbs_up": 0.35, "thumbs_down": 0.08},
        ),
    ]


EVENTS = [
    {"kind": "promotion", "version": "v1", "at": "2026-01-02T00:00:00Z", "detail": "gate passed"},
    {"kind": "promotion", "version": "v2", "at": "2026-01-03T00:00:00Z", "detail": "gate passed"},
    {"kind": "rollback", "version": "v1", "at": "2026-01-04T00:00:00Z", "detail": "by hand"},
]


def test_summary_says_what_moved_most() -> None:
    text = summarize(snapshots(), EVENTS)
    assert text.startswith("Since v1, v2: add exact-match rose from 0.25 to 0.41 (+0.16)")
    assert "KL from base grew to 0.80 nats" in text
    assert "mean length fell 20%" in text
    assert "mul exact-match is new at 0.05" in text
    assert "balanced agreement rose to 80%" in text
    assert "promotion (v2)" in text
    assert summarize(snapshots()[:1]).startswith("First snapshot (base): add exact-match 0.12")
    assert summarize([]) == "No drift snapshots yet."


def test_write_report(tmp_path: Path) -> None:
    snaps = snapshots()
    json_path, html_path = write_report(snaps, EVENTS, tmp_path / "report")
    assert json_path == tmp_path / "report" / "report.json"
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "report.html",
        "report.json",
    ]

    report = json.loads(json_path.read_text(encoding="utf-8"))
    assert report["versions"] == ["base", "v1", "v2"]
    series = report["series"]
    assert series["task_scores"] == {
        "add": [0.12, 0.25, 0.41],
        "sub": [0.30, 0.31, 0.29],
        "mul": [None, None, 0.05],
    }
    for name in ("kl_from_base", "kl_from_previous", "response_length_mean", "judge_score_mean"):
        assert len(series[name]) == 3
    assert series["kl_from_base"] == [0.0, 0.3, 0.8]
    assert series["judge_balanced_agreement"] == [None, 0.5, 0.8]
    assert series["feedback_rates"]["thumbs_up"] == [None, 0.3, 0.35]
    assert series["traffic_training_distance"][0] is None
    assert series["traffic_training_distance"][2] == pytest.approx(0.3)
    assert [s["version"] for s in report["snapshots"]] == ["base", "v1", "v2"]
    kinds = [(e["kind"], e["version"]) for e in report["events"]]
    assert kinds == [("promotion", "v1"), ("promotion", "v2"), ("rollback", "v1")]  # deduped
    assert report["summary"] == summarize(snaps, EVENTS)

    page = html_path.read_text(encoding="utf-8")
    body = page[page.index("<body>") :]
    first = re.search(r"<p[^>]*>(.*?)</p>", body, re.S)
    assert first is not None and first.group(1).startswith("Since v1, v2: add exact-match rose")
    images = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(images) >= 4
    for uri in images:
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.split(",", 1)[1]).startswith(b"\x89PNG")
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link|iframe)\b", page)
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_report_with_one_or_no_snapshot(tmp_path: Path) -> None:
    only = [VersionDrift("base", task_scores={"add": 0.1})]
    json_path, html_path = write_report(only, [], tmp_path / "one")
    assert json.loads(json_path.read_text())["series"]["task_scores"] == {"add": [0.1]}
    assert "First snapshot (base)" in html_path.read_text()
    json_path, html_path = write_report([], [], tmp_path / "none")
    assert json.loads(json_path.read_text())["versions"] == []
    assert "No drift snapshots yet." in html_path.read_text()
