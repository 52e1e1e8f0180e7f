"""Library loggers are quiet by default and configurable; the watchdog keeps start-up quiet."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

import pytest
import uvloop
from prometheus_client import CollectorRegistry, Histogram

from app.core import watchdog as watchdog_module
from app.core.logging import QUIET_LIBRARIES, apply_logger_levels
from app.core.settings import SettingsError, load_settings
from app.core.watchdog import LoopWatchdog, outside_python


def test_chatty_libraries_log_at_warning_by_default() -> None:
    settings = load_settings({}, dotenv=None)
    levels = apply_logger_levels(settings)
    for name in ("asyncssh", "aiosmtpd", "mail.log", "aiosmtplib", "google", "urllib3"):
        assert name in QUIET_LIBRARIES
        assert levels[name] == "WARNING"
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING


def test_log_levels_setting_overrides_a_library_and_adds_loggers() -> None:
    settings = load_settings({"PULSE_LOG_LEVELS": "asyncssh=info, app.watchdog=DEBUG"}, dotenv=None)
    try:
        apply_logger_levels(settings)
        assert logging.getLogger("asyncssh").level == logging.INFO
        assert logging.getLogger("app.watchdog").level == logging.DEBUG
        assert logging.getLogger("aiosmtpd").level == logging.WARNING
    finally:
        apply_logger_levels(load_settings({}, dotenv=None))
        logging.getLogger("app.watchdog").setLevel(logging.NOTSET)


@pytest.mark.parametrize("value", ["asyncssh", "asyncssh=LOUD", "=INFO"])
def test_bad_log_levels_are_refused_with_the_variable_name(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"PULSE_LOG_LEVELS": value}, dotenv=None)
    assert "PULSE_LOG_LEVELS" in str(caught.value)
    assert "logger=LEVEL" in str(caught.value)


def _busy(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


class RecordingLog:
    """Stands in for the watchdog's module logger: structlog caches loggers on first use,
    so capturing through structlog's configuration misses them once an app has logged."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []

    def _record(self, level: str, event: str, **fields: object) -> None:
        self.events.append({"log_level": level, "event": event, **fields})

    def debug(self, event: str, **fields: object) -> None:
        self._record("debug", event, **fields)

    def warning(self, event: str, **fields: object) -> None:
        self._record("warning", event, **fields)


async def _stall(watchdog: LoopWatchdog, logs: RecordingLog) -> list[dict[str, object]]:
    """Block the loop once; the watchdog's reports of it."""
    before = watchdog.blocked_reports
    samples = watchdog.samples
    start = len(logs.events)
    _busy(0.3)
    async with asyncio.timeout(10):
        while watchdog.blocked_reports == before or watchdog.samples < samples + 3:
            await asyncio.sleep(0.01)
    return [e for e in logs.events[start:] if e["event"] in ("loop.blocked", "loop.lag")]


def _histogram() -> Histogram:
    return Histogram("lag_seconds", "lag", registry=CollectorRegistry())


async def test_watchdog_reports_start_up_stalls_at_debug_and_later_ones_as_warnings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logs = RecordingLog()
    monkeypatch.setattr(watchdog_module, "log", logs)
    watchdog = LoopWatchdog(_histogram(), interval_s=0.01, warn_s=0.05, startup_grace_s=0.0)
    task = asyncio.create_task(watchdog.run())
    try:
        while watchdog.samples < 3:
            await asyncio.sleep(0.01)
        during_start = await _stall(watchdog, logs)
        assert during_start, "the stall was not reported at all"
        assert {e["log_level"] for e in during_start} == {"debug"}
        watchdog.mark_started()  # grace 0: from now on a stall is a warning with its stack
        after = await _stall(watchdog, logs)
        blocked = [e for e in after if e["event"] == "loop.blocked"]
        assert blocked
        assert blocked[0]["log_level"] == "warning"
        assert "_busy" in str(blocked[0]["stack"])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _idle_loop_seen_as_outside_python(run: Callable[[Coroutine[Any, Any, None]], None]) -> bool:
    """Run an idle event loop in a thread; is its sampled frame classed as outside Python?"""
    stop = threading.Event()

    async def idle() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.05)

    thread = threading.Thread(target=run, args=(idle(),))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            frame = sys._current_frames().get(thread.ident or 0)
            if frame is not None and outside_python(frame):
                return True
            time.sleep(0.01)  # sampling another thread, as the watchdog's helper does
        return False
    finally:
        stop.set()
        thread.join(timeout=10)


def test_a_stall_outside_python_code_is_explained_instead_of_a_stack() -> None:
    # An idle loop (asyncio's or uvloop's) shows only the loop's machinery...
    assert _idle_loop_seen_as_outside_python(asyncio.run)
    assert _idle_loop_seen_as_outside_python(uvloop.run)

    # ...while Python code that blocks is named by its own frame.
    def handler() -> FrameType:
        return sys._getframe()

    assert not outside_python(handler())
