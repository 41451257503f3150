"""The arith world's settings: operand ranges and the release schedule, in one frozen record.

Everything else in `world` takes a `WorldConfig` (or uses the default) so that the
world can be made easier or harder in one place. It holds no behaviour beyond validation and
conversion to plain JSON-able data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from world.schedule import DEFAULT_RELEASE


@dataclass(frozen=True)
class WorldConfig:
    """Operand ranges (inclusive, from 0) per family, and when each family is released."""

    add_max: int = 20
    """Addition: both operands in 0..add_max."""
    sub_max: int = 20
    """Subtraction: minuend in 0..sub_max, subtrahend in 0..minuend (never negative)."""
    mul_max: int = 12
    """Multiplication: both operands in 0..mul_max (12: 1,690 prompts, about 420 held out,
    enough for the gate to see a 0.05 drop; at 9 the 248 held-out items often could not)."""
    release: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_RELEASE))
    """Family name -> the cycle from which it is live (see `schedule.live_families`)."""

    def __post_init__(self) -> None:
        for name in ("add_max", "sub_max", "mul_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        object.__setattr__(self, "release", dict(self.release))

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for manifests."""
        return {
            "add_max": self.add_max,
            "sub_max": self.sub_max,
            "mul_max": self.mul_max,
            "release": dict(self.release),
        }
