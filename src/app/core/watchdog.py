"""Event-loop watchdog: measures loop lag and names the code that blocks the loop.

A coroutine sleeps for a fixed interval and records how late it woke up (works
with any loop, uvloop included). A helper thread watches the coroutine's
heartbeat; when the loop has not come back for longer than the threshold it
samples the loop thread's current stack, so the log says *what* blocked, not only
that something did.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from types import FrameType

import structlog
from prometheus_client import Histogram

log = structlog.get_logger("app.watchdog")

# Start-up (imports, migrations, the first loads) stalls the loop by design; until the app
# has started and this long after, stalls are logged at debug (PULSE_LOG_LEVELS=
# app.watchdog=DEBUG shows them) instead of as warnings with stacks that look like crashes.
STARTUP_GRACE_S = 10.0


OUTSIDE_PYTHON = (
    "no Python code of the loop was running: the loop waited for the GIL (another thread"
    " held it), ran C code, or the machine was too busy to schedule it"
)
# (file, function) of the innermost Python frame when the loop thread runs no Python code:
# uvloop's loop is C, so an idle or GIL-starved uvloop shows the frame that started it.
_LOOP_MACHINERY = frozenset(
    {
        ("asyncio/runners.py", "run"),
        ("asyncio/base_events.py", "run_until_complete"),
        ("asyncio/base_events.py", "run_forever"),
        ("asyncio/base_events.py", "_run_once"),
        ("selectors.py", "select"),
        ("selectors.py", "poll"),
        ("uvloop/__init__.py", "run"),
    }
)


def outside_python(frame: FrameType) -> bool:
    """The loop thread's innermost Python frame is the event loop's own machinery."""
    path = frame.f_code.co_filename.replace("\\", "/")
    name = frame.f_code.co_name
    return any(path.endswith(file) and name == func for file, func in _LOOP_MACHINERY)


class LoopWatchdog:
    def __init__(
        self,
        lag_histogram: Histogram,
        *,
        interval_s: float,
        warn_s: float,
        startup_grace_s: float | None = None,
    ) -> None:
        self._histogram = lag_histogram
        # None: no start-up phase (warn from the first stall); otherwise quiet until
        # ``mark_started()`` plus this long.
        self._startup_grace_s = startup_grace_s
        self._quiet_until = float("inf") if startup_grace_s is not None else 0.0
        self._interval_s = interval_s
        self._warn_s = warn_s
        self._heartbeat = time.monotonic()
        self._beat = 0
        self._stop = threading.Event()
        self._loop_thread_id: int | None = None
        self.max_lag_s = 0.0
        self.samples = 0
        self.blocked_reports = 0
        self.last_blocked_stack: str | None = None

    def reset_max(self) -> None:
        self.max_lag_s = 0.0

    def mark_started(self) -> None:
        """The app has started: stalls become warnings after the start-up grace."""
        self._quiet_until = time.monotonic() + (self._startup_grace_s or 0.0)

    def starting(self) -> bool:
        return time.monotonic() < self._quiet_until

    async def run(self) -> None:
        """Run until cancelled; owns the helper thread for its lifetime."""
        loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        monitor = threading.Thread(target=self._monitor, name="pulse-loop-watchdog", daemon=True)
        monitor.start()
        try:
            while True:
                started = loop.time()
                self._heartbeat = time.monotonic()
                self._beat += 1
                await asyncio.sleep(self._interval_s)
                lag = max(0.0, loop.time() - started - self._interval_s)
                self._histogram.observe(lag)
                self.samples += 1
                self.max_lag_s = max(self.max_lag_s, lag)
                if lag >= self._warn_s:
                    report = log.debug if self.starting() else log.warning
                    report("loop.lag", lag_ms=round(lag * 1000, 1))
        finally:
            self._stop.set()

    def _monitor(self) -> None:
        reported_beat = -1
        while not self._stop.wait(self._warn_s / 2):
            beat, heartbeat = self._beat, self._heartbeat
            stalled = time.monotonic() - heartbeat - self._interval_s
            if stalled < self._warn_s or beat == reported_beat:
                continue
            reported_beat = beat
            self.blocked_reports += 1
            frame = sys._current_frames().get(self._loop_thread_id or 0)
            stack = "".join(traceback.format_stack(frame, limit=20)) if frame else "unavailable"
            self.last_blocked_stack = stack
            fields: dict[str, object] = {"blocked_ms": round(stalled * 1000, 1)}
            if frame is not None and outside_python(frame):
                # A stack ending in the loop's own run call names nothing: say what it means.
                fields["where"] = OUTSIDE_PYTHON
            else:
                fields["stack"] = stack
            if self.starting():
                log.debug("loop.blocked", during="start-up", **fields)
            else:
                log.warning("loop.blocked", **fields)
