"""Generated interaction logs: valid for ingest, deterministic, the intended mix; the CLI."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli.world_commands import world_app
from replay.records import parse_record
from world.corpus import CorpusConfig, CorpusStream, sample_text
from world.logs import generate_logs
from world.split import split_of
from world.tasks import compare_line, families, get_family
from world.tokenizer import build_tokenizer
from world.verify import verify_integer


@pytest.mark.parametrize("task", ["add", "sub", "mul"])
def test_logs_parse_for_ingest(task: str) -> None:
    records = generate_logs(task, 300, seed=2)
    for line in (json.dumps(r) for r in records):
        normalized = parse_record(json.loads(line))  # raises RecordError if invalid
        assert normalized.table == "interactions"
        assert normalized.row["task"] == task
    assert len({r["id"] for r in records}) == 300


def test_logs_mix_and_truth() -> None:
    records = generate_logs("add", 400, seed=0)
    kinds = Counter()
    for r in records:
        fb = r.get("feedback")
        reply = r["messages"][-1]["content"]
        truth = families()["add"].answer(*map(int, re.findall(r"\d+", r["messages"][0]["content"])))
        score = verify_integer([r["messages"][0]["content"]], [reply], reference=[truth])
        assert score == [1.0 if r["metadata"]["correct"] else 0.0]
        if fb is None:
            assert "reference" not in r  # bare traffic: no oracle
            kinds["none"] += 1
            continue
        assert r["reference"] == truth
        if fb["rating"] == 1:
            assert r["metadata"]["correct"]
            kinds["up"] += 1
        elif "correction" in fb:
            assert not r["metadata"]["correct"]
            assert verify_integer(["q"], [fb["correction"]], reference=[r["reference"]]) == [1.0]
            kinds["corrected"] += 1
        else:
            assert fb["rating"] == -1 and not r["metadata"]["correct"]
            kinds["down"] += 1
    assert all(kinds[k] > 20 for k in ("none", "up", "corrected", "down"))
    assert 0.6 < kinds["none"] / len(records) < 0.8  # most traffic is bare
    assert all(split_of(r["messages"][0]["content"]) == "train" for r in records)


def test_logs_deterministic() -> None:
    assert generate_logs("sub", 50, seed=5) == generate_logs("sub", 50, seed=5)
    assert generate_logs("sub", 50, seed=5) != generate_logs("sub", 50, seed=6)


def test_corpus_has_no_chat_and_no_heldout_questions() -> None:
    text = sample_text(3000, seed=0)
    assert "<|" not in text
    lines = text.splitlines()
    problems = [p for name in ("add", "sub", "mul") for p in get_family(name).all_problems()]
    questions = {p.prompt for p in problems}
    asked = [line for line in lines if line in questions]
    assert asked and all(split_of(q) == "train" for q in asked)
    worked = {f"{p.prompt} {p.worked}": p for p in problems}
    answered = [worked[line] for line in lines if line in worked]  # 'Compute 3 plus 4. 3+4=7'
    assert answered and all(p.split == "train" for p in answered)
    assert text == sample_text(3000, seed=0)


def test_corpus_checks_answers_to_train_questions() -> None:
    """'Compute 3 plus 4. The answer is 9. 3+4=7 vs 9: different.': the question's own
    equation, compared right with the answer in between, half the time the same."""
    problems = {p.prompt: p for n in ("add", "sub", "mul") for p in get_family(n).all_problems()}
    checks = []
    for line in sample_text(3000, seed=1).splitlines():
        match = re.fullmatch(r"(.+[.?]) (?:The answer is |\d+[-+*]\d+=)(-?\d+)\. (.+)", line)
        if match and match.group(1) in problems:
            checks.append((problems[match.group(1)], int(match.group(2)), match.group(3)))
    assert len(checks) > 100
    for problem, said, tail in checks:
        assert problem.split == "train"
        right = int(problem.answer)
        assert tail == f"{problem.worked.split('=')[0]}={compare_line(right, said)}"
    same = sum(said == int(problem.answer) for problem, said, _ in checks) / len(checks)
    assert 0.35 < same < 0.65


def test_corpus_blocks() -> None:
    tok = build_tokenizer()
    stream = iter(CorpusStream(tok, seed=0))
    block = next(stream)
    assert block["input_ids"].shape == (CorpusConfig().block_size,)
    assert int(block["input_ids"][0]) == tok.bos_token_id
    assert block["labels"].tolist() == block["input_ids"].tolist()
    again = next(iter(CorpusStream(tok, seed=0)))
    assert again["input_ids"].tolist() == block["input_ids"].tolist()
    # every line ends with the end-of-text token, so pretraining trains its embedding
    ids = block["input_ids"].tolist()
    newline = tok.convert_tokens_to_ids("\n")
    breaks = [i for i, t in enumerate(ids) if t == newline]
    assert len(breaks) >= 3 and all(ids[i - 1] == tok.eos_token_id for i in breaks)


def test_cli_logs_stdout_and_file(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(world_app, ["logs", "--task", "mul", "--n", "20", "--seed", "3"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 20
    for line in lines:
        parse_record(json.loads(line))
    out = tmp_path / "logs" / "mul.jsonl"
    result = runner.invoke(
        world_app, ["logs", "--task", "mul", "--n", "20", "--seed", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines() == lines
    bad = runner.invoke(world_app, ["logs", "--task", "div"])
    assert bad.exit_code == 2
