"""The three accepted shapes of an interaction-log line, validated and normalized.

Shapes (one JSON object per line):
1. interaction: `messages` (OpenAI chat, last one from the assistant), optional
   `feedback`, `reference`, `task`, `adapter`, `id`, `timestamp`, `metadata`;
2. preference: `prompt` (messages), `chosen`, `rejected`, optional `task`, `id`,
   `timestamp`, `metadata`;
3. OpenAI request/response log: `request.messages` + `response.choices[0].message`,
   mapped to an interaction.

`parse_record` turns one decoded JSON object into a `NormalizedRecord` (a row ready for
the database, with its identity key) or raises `RecordError` naming the field.
Unknown top-level keys are kept under `metadata`. This module does no I/O and does not
decode JSON text (`replay.ingest_json` does).

Times: a `timestamp` (or an OpenAI `response.created`) that is a JSON number, or a
string holding only a number, is Unix seconds (never milliseconds, whatever its size);
any other string is ISO 8601, UTC when it names no zone. Either must fall within years
1 to 9999 once converted to UTC; anything else is refused, naming the field.

Ids: an `id` is a string of at most `MAX_ID_CHARS` characters or an integer (the
`external_id` column's limit, the same on SQLite and PostgreSQL).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

MAX_ID_CHARS = 256
"""Longest record `id` (the `external_id` column is VARCHAR(256))."""
MAX_LABEL_CHARS = 200
"""Longest `task`, `adapter` and source name (their columns are VARCHAR(200))."""
MAX_KEY_CHARS = 300
"""Longest record key (the `record_key` column is VARCHAR(300))."""

Role = Literal["system", "user", "assistant", "tool", "developer"]
Text = Annotated[StrictStr, Field(min_length=1)]
Label = Annotated[StrictStr, Field(min_length=1, max_length=MAX_LABEL_CHARS)]
RecordId = Annotated[StrictStr, Field(max_length=MAX_ID_CHARS)] | StrictInt


class RecordError(ValueError):
    """A line that is not a usable record; `field` names where (dotted path) when known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{self.field}: {msg}" if self.field else msg


class TextPart(BaseModel):
    """One part of a list-valued OpenAI `content`; only text parts are accepted."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    """One chat message; extra keys (name, tool_call_id, ...) are kept as they are."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: StrictStr | list[TextPart]


class Feedback(BaseModel):
    """What the user said about the answer."""

    model_config = ConfigDict(extra="forbid")

    rating: Literal[-1, 0, 1] | None = None
    correction: Text | None = None
    comment: StrictStr | None = None

    @field_validator("rating", mode="before")
    @classmethod
    def _integer_rating(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("must be the integer -1, 0 or 1")
        return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]*)?")
_INTEGER = re.compile(r"[+-]?0*([0-9]*)")


def unix_seconds(value: int | float) -> datetime:
    """The UTC time `value` seconds after 1970-01-01T00:00:00Z.

    Raises ValueError when that falls outside years 1 to 9999.

    >>> unix_seconds(30_000_000_000).year
    2920
    >>> unix_seconds(-62_135_596_800).isoformat()
    '0001-01-01T00:00:00+00:00'
    """
    try:
        return _EPOCH + timedelta(seconds=value)
    except (OverflowError, ValueError):
        pass
    hint = ""
    if value >= 10**12:  # milliseconds since September 2001
        try:
            _EPOCH + timedelta(seconds=value / 1000)
            hint = " (timestamps are Unix seconds; this looks like milliseconds)"
        except (OverflowError, ValueError):
            pass
    raise _out_of_range(str(value), hint) from None


def _out_of_range(text: str, hint: str = "") -> ValueError:
    if len(text) > 24:
        text = f"{text[:20]}... ({len(text)} characters)"
    return ValueError(f"{text} Unix seconds is outside years 1 to 9999{hint}")


def _seconds_or_text(value: Any) -> Any:
    """A number, or a string that is only a number, as Unix seconds; anything else as is."""
    if isinstance(value, bool):
        return value  # refused by the datetime validation
    if isinstance(value, int | float):
        return unix_seconds(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return _seconds_of_text(value)
    return value


def _seconds_of_text(text: str) -> datetime:
    """`unix_seconds` of a number written as text (`_NUMBER`), of any length."""
    match = _INTEGER.fullmatch(text)
    if match is None:
        return unix_seconds(float(text))
    digits = match.group(1)  # without sign and leading zeros
    if len(digits) > 40:  # far beyond year 9999, and perhaps beyond what int() reads
        raise _out_of_range(text)
    number = int(digits or "0")
    return unix_seconds(-number if text.startswith("-") else number)


def _in_utc(value: datetime | None) -> datetime | None:
    """`value` in UTC (no zone: taken as UTC); ValueError when UTC has no such year."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError(
            f"{value.isoformat()} is outside years 1 to 9999 once converted to UTC"
        ) from None


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: RecordId | None = None
    timestamp: datetime | None = None
    task: Label | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _numbers_are_seconds(cls, value: Any) -> Any:
        return _seconds_or_text(value)

    @field_validator("timestamp")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return _in_utc(value)


class InteractionIn(_Common):
    messages: list[Message]
    feedback: Feedback | None = None
    reference: StrictStr | None = None
    adapter: Label | None = None


class PreferenceIn(_Common):
    prompt: list[Message] | Text
    chosen: Text
    rejected: Text


class _Choice(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: Message


class _OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    messages: list[Message]


class _OpenAIResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    choices: Annotated[list[_Choice], Field(min_length=1)]
    created: StrictInt | None = None
    model: StrictStr | None = None

    @field_validator("created", mode="before")
    @classmethod
    def _created_in_range(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            unix_seconds(value)  # out of range: raises, naming the range
        # An integer beyond 64 bits arrives as its digits (`replay.ingest_json`): 13 or
        # more significant digits are beyond year 9999 either way; say so, not "not an int".
        match = _INTEGER.fullmatch(value) if isinstance(value, str) else None
        if match is not None and len(match.group(1)) > 12:
            _seconds_of_text(value)  # raises
        return value


class OpenAILogIn(_Common):
    request: _OpenAIRequest
    response: _OpenAIResponse
    feedback: Feedback | None = None
    reference: StrictStr | None = None
    adapter: Label | None = None


@dataclass(frozen=True, slots=True)
class NormalizedRecord:
    """A validated record: `table` is 'interactions' or 'preference_pairs', `row` its columns
    (without `source`, `record_key`, timestamps of receipt). `encoded` holds the JSON
    columns already serialized canonically, so a bulk writer need not serialize twice."""

    table: str
    external_id: str | None
    content_hash: str
    row: dict[str, Any]
    encoded: dict[str, str]

    def record_key(self, source: str) -> str:
        """`id:<source>:<id>`, or `sha256:<content hash>` without an id. An `id:` key
        longer than the column holds (a long source with a long id) becomes
        `idsha256:<sha256 of source, NUL, id>`: the same identity, in fewer characters."""
        if self.external_id is not None:
            key = f"id:{source}:{self.external_id}"
            if len(key) <= MAX_KEY_CHARS:
                return key
            digest = hashlib.sha256(f"{source}\0{self.external_id}".encode()).hexdigest()
            return f"idsha256:{digest}"
        return f"sha256:{self.content_hash}"


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list"})


def _field_path(loc: tuple[int | str, ...]) -> str:
    """`('messages', 2, 'role')` -> `messages[2].role`, without pydantic's union-member tags
    (`str`, `list[Message]`, `function-before[...]`), which name types, not fields."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or any(c in part for c in "[-("):
            continue
        else:
            out += f".{part}" if out else part
    return out


def _validate(model: type[BaseModel], obj: dict[str, Any]) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        # Of several errors (a union tries each member), the deepest names the field best.
        err = max(exc.errors(include_url=False), key=lambda e: len(e["loc"]))
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        raise RecordError(msg + extra, _field_path(err["loc"]) or None) from None


def _extras(model: BaseModel) -> dict[str, Any]:
    return dict(model.__pydantic_extra__ or {})


_MESSAGES: TypeAdapter[list[Message]] = TypeAdapter(list[Message])


def _dump_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Plain dicts of the messages, with list-of-parts content joined into one string."""
    dumped: list[dict[str, Any]] = _MESSAGES.dump_python(messages)
    for m in dumped:
        if not isinstance(m["content"], str):
            m["content"] = "".join(part["text"] for part in m["content"])
    return dumped


def _canonical_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        raise RecordError(f"cannot be stored as JSON: {exc}") from None


def canonical_json(value: Any) -> str:
    """Key-sorted, compact UTF-8 JSON: equal content gives equal text (and equal hash).

    Datetimes are written in RFC 3339; other values JSON cannot hold as `str(value)`.
    Raises `RecordError` for values JSON cannot represent (integers beyond 64 bits).
    """
    return _canonical_bytes(value).decode("utf-8")


def content_hash(value: Any) -> str:
    """sha256 of `canonical_json(value)`, as hex."""
    return hashlib.sha256(_canonical_bytes(value)).hexdigest()


def _finish(
    table: str, external_id: str | None, row: dict[str, Any], json_columns: tuple[str, ...]
) -> NormalizedRecord:
    """Serialize the JSON columns once and hash the whole canonical content.

    The hash covers the table, every scalar column (in sorted order) and each JSON
    column's canonical text; JSON text holds no raw newline, so joining with newlines
    is unambiguous.
    """
    parts = [table.encode("ascii")]
    encoded = {}
    for name in json_columns:
        try:
            raw = _canonical_bytes(row[name])
        except RecordError as exc:
            raise RecordError(str(exc), "metadata" if name == "meta" else name) from None
        parts.append(raw)
        encoded[name] = raw.decode("utf-8")
    parts.insert(1, _canonical_bytes({k: v for k, v in row.items() if k not in encoded}))
    digest = hashlib.sha256(b"\n".join(parts)).hexdigest()
    return NormalizedRecord(table, external_id, digest, row, encoded)


def _check_conversation(messages: list[dict[str, Any]], field: str) -> None:
    if not messages:
        raise RecordError("the conversation is empty", field)
    if messages[-1]["role"] != "assistant":
        raise RecordError(
            f"the last message must come from the assistant, not {messages[-1]['role']!r}",
            f"{field}[{len(messages) - 1}].role",
        )
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise RecordError("no user message comes before the assistant's reply", field)


def _interaction(
    messages: list[dict[str, Any]],
    common: _Common,
    feedback: Feedback | None,
    reference: str | None,
    adapter: str | None,
    metadata: dict[str, Any],
) -> NormalizedRecord:
    occurred_at = common.timestamp  # already UTC (`_in_utc`)
    fb = feedback or Feedback()
    row = {
        "messages": messages,
        "feedback_rating": fb.rating,
        "feedback_correction": fb.correction,
        "feedback_comment": fb.comment,
        "reference": reference,
        "task": common.task,
        "adapter": adapter,
        "meta": metadata,
        "occurred_at": occurred_at,
    }
    external_id = None if common.id is None else str(common.id)
    return _finish("interactions", external_id, row, ("messages", "meta"))


def _parse_interaction(obj: dict[str, Any]) -> NormalizedRecord:
    rec: InteractionIn = _validate(InteractionIn, obj)
    messages = _dump_messages(rec.messages)
    _check_conversation(messages, "messages")
    metadata = {**rec.metadata, **_extras(rec)}
    return _interaction(messages, rec, rec.feedback, rec.reference, rec.adapter, metadata)


def _parse_openai(obj: dict[str, Any]) -> NormalizedRecord:
    rec: OpenAILogIn = _validate(OpenAILogIn, obj)
    reply = rec.response.choices[0].message
    messages = _dump_messages([*rec.request.messages, reply])
    if reply.role != "assistant":
        raise RecordError(
            f"the response message must come from the assistant, not {reply.role!r}",
            "response.choices[0].message.role",
        )
    _check_conversation(messages, "request.messages")
    if rec.timestamp is None and rec.response.created is not None:
        rec.timestamp = unix_seconds(rec.response.created)  # validated: in range
    response_rest = {k: v for k, v in rec.response.model_dump().items() if k not in ("choices",)}
    request_rest = {k: v for k, v in rec.request.model_dump().items() if k != "messages"}
    metadata = {**rec.metadata, **_extras(rec)}
    metadata["openai"] = {"request": request_rest, "response": response_rest}
    adapter = rec.adapter or rec.response.model or request_rest.get("model")
    if adapter is not None and not isinstance(adapter, str):
        raise RecordError("must be a string", "request.model")
    return _interaction(messages, rec, rec.feedback, rec.reference, adapter, metadata)


def _parse_preference(obj: dict[str, Any]) -> NormalizedRecord:
    rec: PreferenceIn = _validate(PreferenceIn, obj)
    if isinstance(rec.prompt, str):
        prompt = [{"role": "user", "content": rec.prompt}]
    else:
        prompt = _dump_messages(rec.prompt)
        if not prompt:
            raise RecordError("the prompt is empty", "prompt")
        if prompt[-1]["role"] == "assistant":
            raise RecordError(
                "the prompt must not end with an assistant message",
                f"prompt[{len(prompt) - 1}].role",
            )
    if rec.chosen == rec.rejected:
        raise RecordError("chosen and rejected are the same text", "rejected")
    occurred_at = rec.timestamp  # already UTC (`_in_utc`)
    row = {
        "prompt": prompt,
        "chosen": rec.chosen,
        "rejected": rec.rejected,
        "task": rec.task,
        "origin": "ingest",
        "meta": {**rec.metadata, **_extras(rec)},
        "occurred_at": occurred_at,
    }
    external_id = None if rec.id is None else str(rec.id)
    return _finish("preference_pairs", external_id, row, ("prompt", "meta"))


def parse_record(obj: Any) -> NormalizedRecord:
    """Validate one decoded JSON value as one of the three shapes; raise `RecordError`."""
    if not isinstance(obj, dict):
        raise RecordError(f"a record must be a JSON object, not {type(obj).__name__}")
    if "messages" in obj:
        return _parse_interaction(obj)
    if "request" in obj or "response" in obj:
        return _parse_openai(obj)
    if "prompt" in obj or "chosen" in obj or "rejected" in obj:
        return _parse_preference(obj)
    raise RecordError(
        "unrecognized record: expected 'messages' (interaction), 'prompt'/'chosen'/'rejected'"
        " (preference) or 'request'/'response' (OpenAI log)"
    )
