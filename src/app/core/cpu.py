"""Turn-taking for background CPU work done on the event loop.

Background jobs (imports) do their Python work on the loop in slices of a few
milliseconds: a worker thread would not help, since the work holds the GIL and the loop
thread would wait for it after every socket call. Yielding between slices is not enough
with several jobs: each puts one slice in front of every request (eight imports, tens of
milliseconds of loop lag).

:func:`background_slice` hands out one turn per loop. After a slice the turn is passed
on with ``call_soon``, that is, only after every callback that was already ready (a
request, the watchdog) has run; the next waiting job then gets it, in arrival order. A
request therefore waits behind at most one background slice, whatever the number of
jobs, and the jobs' total throughput is unchanged: the loop ran one slice at a time
anyway.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, nullcontext
from typing import TypeVar

# CPU work on the loop runs in slices of about this long between yields.
SLICE_S = 0.005
T = TypeVar("T")
R = TypeVar("R")


class _Turn:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held = False
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def take(self) -> None:
        if not self._held and not self._waiting:
            self._held = True
            return
        granted: asyncio.Future[None] = self._loop.create_future()
        self._waiting.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # given the turn, then cancelled: hand it on
            raise

    def release(self) -> None:
        self._loop.call_soon(self._pass_on)

    def _pass_on(self) -> None:
        while self._waiting:
            granted = self._waiting.popleft()
            if not granted.done():
                granted.set_result(None)  # the turn stays held, by that job now
                return
        self._held = False


_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turn] = weakref.WeakKeyDictionary()


def _turn() -> _Turn:
    loop = asyncio.get_running_loop()
    turn = _turns.get(loop)
    if turn is None:
        turn = _turns[loop] = _Turn(loop)
    return turn


@asynccontextmanager
async def background_slice() -> AsyncIterator[None]:
    """Run the body (one short, CPU-only slice: no awaits inside) in the loop's
    background turn."""
    turn = _turn()
    await turn.take()
    try:
        yield
    finally:
        turn.release()


async def in_slices(
    items: Iterable[T], work: Callable[[T], R], *, background: bool = False
) -> list[R]:
    """``[work(item) for item in items]`` on the loop, yielding every few milliseconds.

    Sketch work is short per item but adds up; worker threads would contend with the
    loop for the GIL (8 concurrent loads lagged it by hundreds of ms), slices do not.
    ``background``: slices take turns with other background work
    (:func:`background_slice`); a request's own work does not queue there.
    """
    loop = asyncio.get_running_loop()
    out: list[R] = []
    iterator = iter(items)
    done = False
    while not done:
        async with background_slice() if background else nullcontext():
            deadline = loop.time() + SLICE_S
            for item in iterator:
                out.append(work(item))
                if loop.time() >= deadline:
                    break
            else:
                done = True
        if not background and not done:
            await asyncio.sleep(0)
    return out
