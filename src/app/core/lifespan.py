"""Start-up and shutdown of the shared resources, in one place and in order.

Start: database URL (the embedded server in development), migrations (development
only), the engine, the HTTP client, the BigQuery thread pool, the watchdog, then
each module's hook, then the database change listener (its subscribers are known).
Shutdown runs the same list backwards, each step bounded.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar

from app.core.db import Database
from app.core.embedded_pg import start_embedded_postgres
from app.core.http import create_http_client
from app.core.metrics import Metrics
from app.core.migrations import head_revisions, upgrade_to_head
from app.core.notify import ChangeListener
from app.core.settings import Settings
from app.core.tasks import BackgroundTasks
from app.core.watchdog import STARTUP_GRACE_S, LoopWatchdog

log = structlog.get_logger("app.lifespan")

# A module's hook: entered after the core resources exist, exited before they close.
LifespanHook = Callable[[Litestar], AbstractAsyncContextManager[None]]


class ConfigurationError(RuntimeError):
    """Start-up cannot continue; the message says what to set."""


async def resolve_database_url(settings: Settings, stack: AsyncExitStack) -> str:
    """The configured URL, or in development the embedded server's (started here)."""
    if settings.database_url:
        return settings.database_url
    if settings.env != "development":
        raise ConfigurationError(f"PULSE_DATABASE_URL is required when PULSE_ENV={settings.env}")
    url, server = await asyncio.to_thread(start_embedded_postgres, settings.data_path)
    log.info("db.embedded_started", data_dir=str(settings.data_path / "postgres"))
    stack.push_async_callback(asyncio.to_thread, server.cleanup)
    return url


def freeze_startup_heap() -> int:
    """Move what start-up built (modules, classes, the app) out of the cyclic GC's reach.

    A full collection walks every tracked object; with ~180k of them from imports alone
    it held the event loop for tens of milliseconds each time an import's batches pushed
    the collector into a full pass. Frozen objects are skipped (they live as long as the
    process anyway). Returns how many objects are frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def build_lifespan(
    settings: Settings, metrics: Metrics, hooks: Sequence[LifespanHook]
) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        state: Any = app.state
        async with AsyncExitStack() as stack:
            url = await resolve_database_url(settings, stack)
            if settings.env == "development":
                await asyncio.to_thread(upgrade_to_head, settings.migration_database_url or url)
                log.info("db.migrated")
            state.migration_head = await asyncio.to_thread(head_revisions)

            db = Database.from_settings(settings, url)
            stack.push_async_callback(db.dispose)
            state.db = db
            metrics.watch_pool(db.pool_status)

            http = create_http_client(settings)
            stack.push_async_callback(http.aclose)
            state.http = http

            bigquery_pool = ThreadPoolExecutor(
                max_workers=settings.bigquery_threads, thread_name_prefix="pulse-bigquery"
            )
            stack.callback(bigquery_pool.shutdown, wait=False, cancel_futures=True)
            state.bigquery_pool = bigquery_pool

            tasks = BackgroundTasks()
            stack.push_async_callback(tasks.shutdown)
            state.tasks = tasks
            watchdog = LoopWatchdog(
                metrics.loop_lag,
                interval_s=settings.loop_lag_interval_ms / 1000,
                warn_s=settings.loop_lag_warn_ms / 1000,
                startup_grace_s=STARTUP_GRACE_S,
            )
            state.watchdog = watchdog
            tasks.spawn(watchdog.run(), name="loop-watchdog")

            # Modules subscribe to change notifications in their hooks; it starts after them.
            listener = ChangeListener(db.engine, timeout_s=settings.db_request_timeout_s)
            state.notify = listener

            for hook in hooks:
                await stack.enter_async_context(hook(app))
            tasks.spawn(listener.run(), name="db-change-listener")
            if settings.env != "test":  # tests start many apps in one process
                log.info("gc.heap_frozen", objects=freeze_startup_heap())
            log.info("app.started", env=settings.env)
            watchdog.mark_started()
            yield
            log.info("app.stopping")
        log.info("app.stopped")

    return lifespan
