"""Formatting rules shared by the report and the analysis of misses."""

from __future__ import annotations

from typing import Any


def unanswered_runs(figure: dict[str, Any]) -> int:
    """Runs in which no request completed (latency longer than the run)."""
    return sum(1 for run in figure.get("runs", []) if run.get("requests") == 0)


def p99_text(figure: dict[str, Any], seconds: float) -> tuple[str, float]:
    """The p99 as shown in the targets, and the value to compare (a run with no answer
    counts as at least its length)."""
    if unanswered_runs(figure):
        floor = max(figure["p99"], seconds * 1000)
        return (
            f">= {floor:,.0f} ms ({unanswered_runs(figure)} of {len(figure['runs'])} runs: "
            f"no response within the {seconds:g} s run)",
            floor,
        )
    return f"{figure['p99']:,.1f} ms", figure["p99"]
