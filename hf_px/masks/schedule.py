"""The exponential schedule: round r of R keeps density (1 − s)^(r/R)."""

from __future__ import annotations


def densities(sparsity: float, rounds: int) -> list[float]:
    return [(1.0 - sparsity) ** (r / rounds) for r in range(1, rounds + 1)]


def keep_counts(total: int, sparsity: float, rounds: int) -> list[int]:
    """Weights kept after each round; the last is exactly ``total − round(s·total)``."""
    counts = [total - round((1.0 - d) * total) for d in densities(sparsity, rounds)]
    counts[-1] = total - round(sparsity * total)
    for i in range(1, len(counts)):  # never grow back (float rounding)
        counts[i] = min(counts[i], counts[i - 1])
    return counts
