"""Self-synthesized rehearsal: the base model's own answers to general prompts, kept for replay.

A model taught a narrow task by SFT forgets how it answered everything else (a LoRA trained
on two-digit sums answers "677" to "What is the capital of France?"). Replaying the model's
own earlier outputs on general prompts (Huang et al., 2024, "Mitigating Catastrophic
Forgetting in Large Language Models with Self-Synthesized Rehearsal") holds it near what it
was without any data of the user's. `ensure_rehearsal` asks the base model (no adapter) the
prompts of `replay.rehearsal_prompts` once per base, greedily, keeps each answer up to its
last finished sentence (an answer cut off mid-sentence would teach the model to stop there;
one with no finished sentence is dropped) or, with `[replay] rehearsal_cut = "tokens"` for
rows taught by KL, as generated, and adds them to the replay buffer as SFT rows
of task `rehearsal` with source `rehearsal:<base>`. From then on every SFT dataset carries
them: as one task of its stratified replay sample, or as a share of their own with
`[replay] rehearsal_share` (`daemon/assemble.py`). Held-out prompts of any task are left
out.

It does not decide the replay ratio (`[replay] ratio`), train, or gate anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from daemon.home import Home, HomeError
from daemon.memory import remember
from daemon.settings import Settings
from judges.tasks import prompt_key
from replay.buffer import NewReplayItem
from replay.db import session_scope
from replay.models import ReplayItem
from stages.generate.api import Chat, GenerationBackend, SamplingParams

SHIPPED = Path(__file__).resolve().parent.parent / "evals" / "data" / "rehearsal_prompts.jsonl"
TASK = "rehearsal"
FINISHED_MARKS = (".", "!", "?", '"', "'", ")")


@dataclass(frozen=True)
class RehearsalResult:
    asked: int
    kept: int
    source: str


def prompts_path(home: Home, setting: str) -> Path:
    """The prompts file a `replay.rehearsal_prompts` value names."""
    if setting == "shipped":
        return SHIPPED
    path = Path(setting).expanduser()
    return path if path.is_absolute() else home.root / path


def read_prompts(path: Path) -> list[Chat]:
    """The prompts of a rehearsal file: one `{"prompt": text or messages}` per line; a bad
    line is an error naming the file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise HomeError(f"replay.rehearsal_prompts: cannot read {path}: {exc}") from exc
    chats: list[Chat] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise HomeError(f"{path}:{number}: not JSON: {exc}") from exc
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if isinstance(prompt, str) and prompt.strip():
            chats.append([{"role": "user", "content": prompt}])
        elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            chats.append(list(prompt))
        else:
            raise HomeError(f"{path}:{number}: prompt: expected text or a list of messages")
    if not chats:
        raise HomeError(f"replay.rehearsal_prompts: {path} holds no prompts")
    return chats


def finished(text: str) -> bool:
    """Whether an answer ended by itself rather than at the length limit (a heuristic: it
    ends with a sentence mark)."""
    return text.rstrip().endswith(FINISHED_MARKS)


def whole_sentences(text: str) -> str | None:
    """The answer up to its last finished sentence: all of it when it `finished`; else cut
    after the last sentence mark that a space follows; None when no sentence finished."""
    text = text.strip()
    if finished(text):
        return text
    ends = [i for i, ch in enumerate(text[:-1]) if ch in FINISHED_MARKS and text[i + 1] == " "]
    return text[: ends[-1] + 1] if ends else None


def as_generated(text: str) -> str | None:
    """The answer as generated, finished or not (`rehearsal_cut = "tokens"`); None when
    empty."""
    return text.strip() or None


def source_label(settings: Settings) -> str:
    return f"rehearsal:{settings.model.base or 'world'}"


def ensure_rehearsal(
    engine: Engine,
    home: Home,
    settings: Settings,
    make_backend: Callable[[], GenerationBackend],
    heldout: frozenset[str] = frozenset(),
    say: Callable[[str], None] = print,
) -> RehearsalResult | None:
    """Add the base's rehearsal answers to the replay buffer unless already there (or
    rehearsal is off: None)."""
    setting = settings.replay.rehearsal_prompts
    if not setting:
        return None
    source = source_label(settings)
    with session_scope(engine) as s:
        done = s.execute(select(ReplayItem.id).where(ReplayItem.source == source).limit(1)).scalar()
    if done is not None:
        return RehearsalResult(0, 0, source)
    prompts = [p for p in read_prompts(prompts_path(home, setting)) if prompt_key(p) not in heldout]
    params = SamplingParams(
        temperature=0.0, max_new_tokens=settings.replay.rehearsal_max_new_tokens, seed=0
    )
    backend = make_backend()
    try:
        answers = backend.generate(prompts, params, adapter=None)
    finally:
        backend.close()
    cut = whole_sentences if settings.replay.rehearsal_cut == "sentence" else as_generated
    kept = [
        (prompt, answer)
        for prompt, texts in zip(prompts, answers, strict=True)
        if texts and (answer := cut(texts[0]))
    ]
    items = [
        NewReplayItem(
            "sft",
            TASK,
            {
                "messages": [*prompt, {"role": "assistant", "content": answer}],
                "task": TASK,
                "origin": "rehearsal",
            },
            source=source,
        )
        for prompt, answer in kept
    ]
    added, _evicted = remember(engine, settings, items)
    how = (
        "each cut to its last finished sentence"
        if cut is whole_sentences
        else f"as generated (at most {params.max_new_tokens} tokens)"
    )
    say(
        f"  rehearsal: the base answered {len(prompts)} general prompts; {added} answers, "
        f"{how}, joined the replay buffer ({source})"
    )
    return RehearsalResult(len(prompts), added, source)
