"""The one division every metric uses: hits over rows, 0.0 (not an error) when there are no rows."""

from __future__ import annotations


def rate(hits: int, total: int) -> float:
    """`hits / total` as an unrounded float; 0.0 when `total` is 0."""
    return hits / total if total else 0.0
