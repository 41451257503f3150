"""The `[tasks.NAME]` tables of `tutord.toml`: a user's own tasks, declared without code.

One `TaskSettings` per task: its grader by name, a JSONL file of prompts with reference
answers (split into training and held-out items by a stable hash of the prompt), an
optional answer format (a grader spec for "the answer parses", read by the curriculum's
parse rate) and an optional lm-eval task folder. Validation here is syntactic (a known
grader name, a regex that compiles, a `module:function` path); files are read when the
tasks are built (`daemon/tasks.py`). It does not read files or import user code.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from judges.graders import check_grader_spec

TASK_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


class TaskSettings(BaseModel):
    """One user task (`[tasks.NAME]`); interactions whose `task` label is NAME use it."""

    model_config = ConfigDict(extra="forbid")

    grader: str = Field(
        "exact",
        description=(
            "exact, normalized, contains, numeric, math, regex:PATTERN, json_schema:FILE "
            "(relative to the home) or module:function"
        ),
    )
    prompts: str | None = Field(
        None,
        description=(
            'JSONL file (relative to the home) of {"prompt": text or messages, "reference": '
            "text}: the task's prompt pool and held-out items"
        ),
    )
    heldout_percent: int = Field(
        10, ge=0, le=100, description="Share of the prompts file held out for the gate (by hash)."
    )
    max_new_tokens: int = Field(32, ge=1, description="Longest answer the gate generates.")
    lm_eval: str | None = Field(None, description="An lm-eval task folder (relative to the home).")
    lm_eval_tasks: list[str] = Field(
        default_factory=list, description="lm-eval task names in that folder, gated too."
    )
    answer_format: str | None = Field(
        None,
        description=(
            "a grader spec (as for grader) scoring 1.0 when an answer has the task's format, "
            "right or wrong: the curriculum's parse rate; unset: not measured"
        ),
    )

    @field_validator("grader", "answer_format")
    @classmethod
    def _grader(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("json_schema:"):
            if not value.removeprefix("json_schema:"):
                raise ValueError("json_schema: needs a file name")
            return value  # the file is looked up relative to the home when tasks are built
        return check_grader_spec(value)
