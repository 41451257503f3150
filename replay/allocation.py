"""How to share a number of items among tasks: max-min fair (`water_fill`) or in proportion
to their sizes (`proportional`), in integers, each bin capped at its size.

Sampling uses both (`replay.sampling`: stratified and uniform shares of k), eviction uses
`water_fill` (`replay.buffer.eviction_quotas`). Pure functions: no database, no I/O.

>>> water_fill([1, 5, 5], 7, [0, 1, 2])
[1, 3, 3]
>>> proportional([2, 6], 4, random.Random(0))
[1, 3]
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def water_fill(sizes: Sequence[int], total: int, extra_order: Sequence[int]) -> list[int]:
    """Share `total` among bins of capacity `sizes` as evenly as possible (max-min fair).

    Each bin gets min(size, level); the units left over by the integer level go one each
    to uncapped bins in `extra_order` (a permutation of the bin indexes). If `total`
    exceeds the sum of sizes every bin is simply full.
    """
    quotas = [0] * len(sizes)
    remaining = total
    open_bins = sorted(range(len(sizes)), key=lambda i: sizes[i])
    while open_bins:
        share = remaining // len(open_bins)
        smallest = open_bins[0]
        if sizes[smallest] <= share:
            quotas[smallest] = sizes[smallest]
            remaining -= sizes[smallest]
            open_bins.pop(0)
            continue
        for i in open_bins:
            quotas[i] = share
        extra = remaining - share * len(open_bins)
        uncapped = set(open_bins)
        for i in extra_order:
            if extra == 0:
                break
            if i in uncapped:
                quotas[i] += 1
                extra -= 1
        break
    return quotas


def proportional(sizes: Sequence[int], k: int, rng: random.Random) -> list[int]:
    """Share k (at most the sum of sizes) in proportion to sizes.

    Each bin gets floor(k * size / total) and the units left over go to bins chosen by
    systematic sampling on the fractional parts, so each bin's expected share is exactly
    k * size / total and no bin gets more than its size (integer arithmetic throughout).
    """
    total = sum(sizes)
    quotas = [k * s // total for s in sizes]
    rests = [k * s % total for s in sizes]  # sum(rests) == (k - sum(quotas)) * total
    if sum(quotas) < k:
        point = min(int(rng.random() * total), total - 1)  # uniform over 0..total-1
        cumulative = 0
        for i, rest in enumerate(rests):  # each rest < total: at most one point per bin
            if cumulative <= point < cumulative + rest:
                quotas[i] += 1
                point += total
            cumulative += rest
    return quotas
