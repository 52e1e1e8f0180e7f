"""Background CPU slices take turns, so foreground work waits behind at most one."""

from __future__ import annotations

import asyncio

from app.core.cpu import background_slice


async def _job(name: str, log: list[str], slices: int) -> None:
    for _ in range(slices):
        async with background_slice():
            log.append(name)


async def _foreground(log: list[str], rounds: int) -> None:
    # A request, or the loop watchdog: something that is ready and wants its turn.
    for _ in range(rounds):
        await asyncio.sleep(0)
        log.append("fg")


def _most_slices_between_foreground_turns(log: list[str]) -> int:
    runs, current = [], 0
    for entry in log[log.index("fg") :]:
        if entry == "fg":
            runs.append(current)
            current = 0
        else:
            current += 1
    return max(runs)


async def test_eight_background_jobs_put_one_slice_at_a_time_before_the_foreground() -> None:
    log: list[str] = []
    jobs = [_job(f"job{n}", log, slices=20) for n in range(8)]
    await asyncio.gather(*jobs, _foreground(log, rounds=60))
    assert sorted(set(log) - {"fg"}) == [f"job{n}" for n in range(8)]
    assert log.count("fg") == 60
    assert _most_slices_between_foreground_turns(log) <= 1


async def test_without_turns_each_job_puts_a_slice_before_the_foreground() -> None:
    """The contrast the gate exists for (plain yielding between slices)."""
    log: list[str] = []

    async def plain(name: str) -> None:
        for _ in range(20):
            log.append(name)
            await asyncio.sleep(0)

    await asyncio.gather(*(plain(f"job{n}") for n in range(8)), _foreground(log, rounds=60))
    assert _most_slices_between_foreground_turns(log) >= 8


async def test_a_job_alone_still_yields_between_slices() -> None:
    log: list[str] = []
    await asyncio.gather(_job("job", log, slices=10), _foreground(log, rounds=10))
    assert _most_slices_between_foreground_turns(log) <= 1


async def test_a_cancelled_job_does_not_keep_the_turn() -> None:
    log: list[str] = []
    victim = asyncio.create_task(_job("victim", log, slices=1000))
    others = [asyncio.create_task(_job(f"job{n}", log, slices=5)) for n in range(3)]
    while log.count("victim") < 3:
        await asyncio.sleep(0)
    victim.cancel()  # whether it waits for the turn or was just handed it
    await asyncio.wait_for(asyncio.gather(*others), timeout=10)
    assert [log.count(f"job{n}") for n in range(3)] == [5, 5, 5]
    assert victim.cancelled()
    # The turn is free again: a new job runs straight away.
    await asyncio.wait_for(_job("late", log, slices=2), timeout=10)
    assert log[-2:] == ["late", "late"]
