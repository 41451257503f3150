"""A scripted generation backend for judge and synthesis tests."""

from __future__ import annotations

from stages.generate.api import AdapterRef, Chat, SamplingParams


class ScriptedBackend:
    """A generation backend that answers from a script: request text -> verdicts.

    It stands in for the judge model only, so that the judge's own logic (rendering,
    parsing, averaging, swapping) can be checked exactly.
    """

    def __init__(self, reply: object) -> None:
        self.reply = reply
        self.requests: list[tuple[Chat, SamplingParams]] = []

    def generate(
        self, prompts: list[Chat], params: SamplingParams, adapter: AdapterRef | None = None
    ) -> list[list[str]]:
        out = []
        for chat in prompts:
            self.requests.append((chat, params))
            out.append(self.reply(chat[-1]["content"], params))  # type: ignore[operator]
        return out

    def close(self) -> None:
        pass
