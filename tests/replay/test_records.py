"""Validation and normalization of the three log shapes (replay.records)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from replay.records import RecordError, parse_record

CHAT = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def test_interaction_with_feedback_reference_and_unknown_keys() -> None:
    rec = parse_record(
        {
            "id": 7,
            "timestamp": "2026-11-26T10:00:00+01:00",
            "messages": CHAT,
            "feedback": {"rating": -1, "correction": "5", "comment": "wrong"},
            "reference": "4",
            "task": "add",
            "adapter": "v3",
            "metadata": {"user": "u1"},
            "region": "eu",
        }
    )
    assert rec.table == "interactions"
    assert rec.external_id == "7"
    assert rec.record_key("web") == "id:web:7"
    row = rec.row
    assert row["messages"] == CHAT
    assert (row["feedback_rating"], row["feedback_correction"], row["feedback_comment"]) == (
        -1,
        "5",
        "wrong",
    )
    assert row["reference"] == "4" and row["task"] == "add" and row["adapter"] == "v3"
    assert row["meta"] == {"user": "u1", "region": "eu"}
    assert row["occurred_at"] == datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def test_naive_timestamp_is_taken_as_utc_and_epoch_numbers_work() -> None:
    naive = parse_record({"messages": CHAT, "timestamp": "2026-01-01T00:00:00"})
    epoch = parse_record({"messages": CHAT, "timestamp": 1767225600})
    assert naive.row["occurred_at"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert epoch.row["occurred_at"] == datetime(2026, 1, 1, tzinfo=UTC)


def test_text_parts_are_joined_and_message_extras_kept() -> None:
    rec = parse_record(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": "c", "name": "bot"},
            ]
        }
    )
    assert rec.row["messages"][0]["content"] == "ab"
    assert rec.row["messages"][1]["name"] == "bot"


def test_preference_with_string_or_message_prompt() -> None:
    a = parse_record({"prompt": "1+1?", "chosen": "2", "rejected": "3", "task": "add"})
    b = parse_record(
        {
            "prompt": [{"role": "user", "content": "1+1?"}],
            "chosen": "2",
            "rejected": "3",
            "task": "add",
        }
    )
    assert a.table == b.table == "preference_pairs"
    assert a.row["prompt"] == [{"role": "user", "content": "1+1?"}]
    assert a.content_hash == b.content_hash
    assert a.record_key("x") == f"sha256:{a.content_hash}"


def test_openai_log_maps_to_interaction() -> None:
    rec = parse_record(
        {
            "request": {
                "model": "base",
                "messages": [{"role": "user", "content": "q"}],
                "temperature": 0.7,
            },
            "response": {
                "id": "chatcmpl-1",
                "model": "tutord-v2",
                "created": 1767225600,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"}}],
                "usage": {"total_tokens": 3},
            },
            "feedback": {"rating": 1},
            "task": "qa",
        }
    )
    assert rec.table == "interactions"
    assert rec.row["messages"] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    assert rec.row["adapter"] == "tutord-v2"
    assert rec.row["feedback_rating"] == 1
    assert rec.row["occurred_at"] == datetime(2026, 1, 1, tzinfo=UTC)
    openai = rec.row["meta"]["openai"]
    assert openai["request"]["temperature"] == 0.7
    assert openai["response"]["id"] == "chatcmpl-1"
    assert openai["response"]["usage"] == {"total_tokens": 3}


def test_identity_hash_ignores_key_order_but_not_content() -> None:
    a = parse_record({"messages": CHAT, "task": "add", "metadata": {"a": 1, "b": 2}})
    b = parse_record({"metadata": {"b": 2, "a": 1}, "task": "add", "messages": CHAT})
    c = parse_record({"messages": CHAT, "task": "sub", "metadata": {"a": 1, "b": 2}})
    assert a.content_hash == b.content_hash
    assert a.content_hash != c.content_hash


@pytest.mark.parametrize(
    ("record", "field", "words"),
    [
        ([1, 2], None, "must be a JSON object"),
        ({"hello": 1}, None, "unrecognized record"),
        ({"messages": []}, "messages", "empty"),
        ({"messages": "hi"}, "messages", "valid list"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "'user'"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "Field required"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "string"),
        ({"messages": [{"role": "user", "content": "q"}]}, "messages[0].role", "assistant"),
        (
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "messages",
            "no user message",
        ),
        ({"messages": CHAT, "feedback": {"rating": 2}}, "feedback.rating", "-1, 0 or 1"),
        ({"messages": CHAT, "feedback": {"rating": True}}, "feedback.rating", "integer"),
        ({"messages": CHAT, "feedback": {"ratnig": 1}}, "feedback.ratnig", "Extra inputs"),
        ({"messages": CHAT, "feedback": {"correction": ""}}, "feedback.correction", "at least 1"),
        ({"messages": CHAT, "timestamp": "yesterday"}, "timestamp", "datetime"),
        ({"messages": CHAT, "task": ""}, "task", "at least 1"),
        ({"messages": CHAT, "metadata": [1]}, "metadata", "dictionary"),
        ({"messages": CHAT, "id": 1.5}, "id", None),
        ({"prompt": "q", "chosen": "a"}, "rejected", "Field required"),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, "rejected", "same text"),
        ({"prompt": [], "chosen": "a", "rejected": "b"}, "prompt", "empty"),
        ({"prompt": CHAT, "chosen": "a", "rejected": "b"}, "prompt[1].role", "must not end"),
        (
            {
                "request": {"messages": [{"role": "user", "content": "q"}]},
                "response": {"choices": []},
            },
            "response.choices",
            "at least 1",
        ),
        (
            {
                "request": {"messages": []},
                "response": {"choices": [{"message": {"role": "user", "content": "x"}}]},
            },
            "response.choices[0].message.role",
            "assistant",
        ),
    ],
)
def test_bad_records_name_the_field(record: Any, field: str | None, words: str | None) -> None:
    with pytest.raises(RecordError) as info:
        parse_record(record)
    assert info.value.field == field
    if words:
        assert words in str(info.value)
    if field:
        assert str(info.value).startswith(field + ": ")
