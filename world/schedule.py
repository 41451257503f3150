"""When each task family is released: the arith world's curriculum of traffic over time.

A release schedule maps a family name to the cycle (or day: any step counter the caller
uses) from which it is live; `live_families` says which families are live at a step. The
default releases addition at 0, subtraction at 1 and multiplication at 2, so forgetting and
the value of replay become visible as families arrive. It does not run or count cycles.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

DEFAULT_RELEASE: Mapping[str, int] = MappingProxyType({"add": 0, "sub": 1, "mul": 2})


def live_families(step: int, release: Mapping[str, int] = DEFAULT_RELEASE) -> list[str]:
    """Families released at or before `step`, in order of release (then of name).

    >>> live_families(0)
    ['add']
    >>> live_families(5)
    ['add', 'sub', 'mul']
    >>> live_families(-1)
    []
    """
    live = [(at, name) for name, at in release.items() if at <= step]
    return [name for _, name in sorted(live)]


def newly_released(step: int, release: Mapping[str, int] = DEFAULT_RELEASE) -> list[str]:
    """Families whose release step is exactly `step`.

    >>> newly_released(1)
    ['sub']
    """
    return sorted(name for name, at in release.items() if at == step)
