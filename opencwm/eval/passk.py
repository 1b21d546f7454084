"""pass@k and the spread of a benchmark's score.

``pass_at_k``: the unbiased estimator of Chen et al. (2021, the Codex paper): from ``n`` samples of which ``c``
are right, the chance that at least one of ``k`` drawn without replacement is right, ``1 - C(n-c, k) / C(n, k)``,
computed as a product so that large ``n`` does not overflow. A benchmark's pass@k is its mean over items.

``interval``: a confidence interval for that mean over items (the normal approximation with the items' standard
error: items are the unit that varies between benchmark draws), clipped to [0, 1].
"""

from __future__ import annotations

import math
from statistics import NormalDist


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that some of ``k`` of the ``n`` samples (``c`` right) is right; needs ``k <= n``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n and 0 <= c <= n (n={n}, c={c})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A ``confidence`` interval for the mean of ``values`` (one per item); None for fewer than two items."""
    if len(values) < 2:
        return None
    centre = sum(values) / len(values)
    variance = sum((v - centre) ** 2 for v in values) / (len(values) - 1)
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * math.sqrt(variance / len(values))
    return max(0.0, centre - half), min(1.0, centre + half)
