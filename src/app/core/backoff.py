"""Retry delays: exponential backoff with jitter, one rule for every retry in the app."""

from __future__ import annotations

import random


def backoff_s(attempt: int, *, base_s: float, max_s: float) -> float:
    """The pause before retry number ``attempt`` (1 = the first retry): ``base * 2^(n-1)``,
    capped at ``max_s``, then scaled by a random factor between 0.5 and 1 so that many
    failures at once do not retry in step."""
    ceiling = min(max_s, base_s * 2.0 ** min(max(0, attempt - 1), 40))
    return float(ceiling * random.uniform(0.5, 1.0))
