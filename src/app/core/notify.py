"""PostgreSQL LISTEN/NOTIFY for the whole process: one dedicated connection, channel ->
callbacks.

Facts that rarely change (a tenant's settings, its data version) are cached in memory
and dropped when the database says they changed: triggers send ``pg_notify`` in the
transaction that changes them, so every writer (a request, an import, another replica,
an operator's SQL) invalidates every process's cache, and only once it committed.

The listener holds one connection of the shared engine (outside the pool's rotation
while it lives), started by the lifespan as an owned task, and reconnects with backoff
when it is lost. While it is down nothing is notified, so :attr:`ChangeListener.live`
turns false and caches fall back to a short time to live; when it is back, every
``on_resync`` callback runs (drop everything cached: changes may have been missed).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.db import discard_connection

log = structlog.get_logger("app.notify")

Callback = Callable[[str], None]


class ChangeListener:
    """LISTENs on the subscribed channels and calls each channel's callbacks with the
    payload. Callbacks are plain functions run on the event loop: keep them short."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        timeout_s: float,
        check_interval_s: float = 15.0,
        backoff_min_s: float = 0.1,
        backoff_max_s: float = 10.0,
    ) -> None:
        self._engine = engine
        self._timeout_s = timeout_s
        self._check_interval_s = check_interval_s
        self._backoff = (backoff_min_s, backoff_max_s)
        self._callbacks: dict[str, list[Callback]] = {}
        self._resync: list[Callable[[], None]] = []
        self._live = asyncio.Event()
        self._started = False
        self.subscriptions = 0  # how many times LISTEN succeeded (1 + reconnects)
        self.losses = 0  # how many times a subscribed connection was lost
        self.backend_pid: int | None = None

    @property
    def live(self) -> bool:
        """True while notifications are being received (caches may trust them)."""
        return self._live.is_set()

    def subscribe(self, channel: str, callback: Callback) -> None:
        """Call ``callback(payload)`` for every NOTIFY on ``channel`` (before :meth:`run`)."""
        if self._started:
            raise RuntimeError("subscribe before the listener starts")
        self._callbacks.setdefault(channel, []).append(callback)

    def on_resync(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time the listener (re)subscribes: drop all cached facts."""
        self._resync.append(callback)

    async def wait_live(self) -> None:
        await self._live.wait()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with exponential backoff and jitter."""
        self._started = True
        if not self._callbacks:
            return
        low, high = self._backoff
        delay = low
        while True:
            subscribed_before = self.subscriptions
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("notify.listener_failed", error=repr(exc))
            finally:
                self._live.clear()
            if self.subscriptions > subscribed_before:
                self.losses += 1
                delay = low  # it was up: the first retry comes quickly
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, high)

    async def _listen_once(self) -> None:
        lost = asyncio.Event()
        conn: AsyncConnection | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                conn = await self._engine.connect()
                raw = await conn.get_raw_connection()
                driver: Any = raw.driver_connection

                def on_lost(_conn: Any) -> None:
                    self._live.clear()  # at once: notifications may already be missed
                    lost.set()

                driver.add_termination_listener(on_lost)
                for channel in self._callbacks:
                    await driver.add_listener(channel, self._dispatch)
                self.backend_pid = driver.get_server_pid()
            # From here on every change is notified; what was cached before may be stale.
            self.subscriptions += 1
            for resync in self._resync:
                resync()
            self._live.set()
            log.info("notify.listening", channels=sorted(self._callbacks), pid=self.backend_pid)
            while not lost.is_set():
                try:
                    async with asyncio.timeout(self._check_interval_s):
                        await lost.wait()
                except TimeoutError:
                    # A link that died silently (no FIN) only shows when used.
                    async with asyncio.timeout(self._timeout_s):
                        await driver.fetchval("SELECT 1")
            log.warning("notify.connection_lost", pid=self.backend_pid)
        finally:
            self._live.clear()
            if conn is not None:
                await discard_connection(conn)

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        for callback in self._callbacks.get(channel, ()):
            try:
                callback(payload)
            except Exception:
                log.exception("notify.callback_failed", channel=channel)
