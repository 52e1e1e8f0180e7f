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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


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
