"""The stable train / held-out split of prompts.

A prompt's split is a pure function of its text (whitespace-normalized): sha256 of the text,
taken mod 100, below `HELDOUT_PERCENT` means "heldout". It never changes across runs,
machines or Python versions (no `hash()`), so evaluation prompts are never trained on.
It does not know about tasks, databases or files.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "heldout"]
HELDOUT_PERCENT = 25


def _normalize(text: str) -> str:
    return " ".join(text.split())


def split_of(prompt: str, heldout_percent: int = HELDOUT_PERCENT) -> Split:
    """'heldout' for about `heldout_percent`% of prompts, 'train' for the rest.

    >>> split_of("What is 3+4?") == split_of("  What is   3+4? ")
    True
    """
    digest = hashlib.sha256(_normalize(prompt).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return "heldout" if bucket < heldout_percent else "train"


def is_heldout(prompt: str, heldout_percent: int = HELDOUT_PERCENT) -> bool:
    """True when `split_of(prompt)` is 'heldout'."""
    return split_of(prompt, heldout_percent) == "heldout"
