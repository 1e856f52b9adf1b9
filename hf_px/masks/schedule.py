"""The exponential schedule: round r of R keeps density (1 − s)^(r/R).

A model that comes with weights already at zero (a pruned checkpoint pruned again)
starts from the density d₀ it has: round r keeps d₀ · ((1 − s)/d₀)^(r/R), so the
same number of rounds spans the way that is left.
"""

from __future__ import annotations


def densities(sparsity: float, rounds: int, start: float = 1.0) -> list[float]:
    ratio = (1.0 - sparsity) / start
    return [start * ratio ** (r / rounds) for r in range(1, rounds + 1)]


def keep_counts(total: int, sparsity: float, rounds: int, start: int | None = None) -> list[int]:
    """Weights kept after each round; the last is exactly ``total − round(s·total)``.

    `start`: the weights kept before the first round (default `total`); never exceeded.
    """
    start = total if start is None else start
    counts = [total - round((1.0 - d) * total) for d in densities(sparsity, rounds, start / total)]
    counts[-1] = total - round(sparsity * total)
    counts[0] = min(counts[0], start)
    for i in range(1, len(counts)):  # never grow back (float rounding)
        counts[i] = min(counts[i], counts[i - 1])
    return counts
