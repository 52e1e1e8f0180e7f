"""The module's lifespan: outbox sender and digest scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar

from app.core.db import Database
from app.core.settings import Settings
from app.core.tasks import BackgroundTasks
from app.modules.notifications.digest import DigestScheduler
from app.modules.notifications.sender import OutboxSender
from app.modules.notifications.smtp import SmtpTarget, target_from_settings

log = structlog.get_logger("app.notifications")


async def _delivery_target(app: Litestar, settings: Settings) -> SmtpTarget | None:
    if settings.smtp_host:
        return await target_from_settings(settings)
    # In development (no PULSE_SMTP_HOST) app.dev starts a catcher before this hook.
    catcher_port: int | None = getattr(app.state, "dev_smtp_port", None)
    if catcher_port is None:
        log.warning(
            "notifications.smtp_not_configured",
            detail="PULSE_SMTP_HOST is unset: emails stay queued in the outbox until it is set",
        )
        return None
    return await target_from_settings(
        settings, host="127.0.0.1", port=catcher_port, security="none", with_auth=False
    )


async def _stop(task: asyncio.Task[Any], stop: Callable[[], None], grace_s: float) -> None:
    """Ask a loop to stop, give it ``grace_s``, then cancel it."""
    stop()
    done, _ = await asyncio.wait({task}, timeout=grace_s)
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=5)


@asynccontextmanager
async def notifications_lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    db: Database = app.state.db
    tasks: BackgroundTasks = app.state.tasks
    async with AsyncExitStack() as stack:
        target = await _delivery_target(app, settings)
        sender: OutboxSender | None = None
        if target is not None:
            sender = OutboxSender(
                db,
                target,
                batch_size=settings.notify_batch_size,
                poll_interval_s=settings.notify_poll_interval_s,
                max_attempts=settings.notify_max_attempts,
                retry_base_s=settings.notify_retry_base_s,
                retry_max_s=settings.notify_retry_max_s,
                registry=app.state.metrics.registry,
            )
            app.state.notifications_sender = sender
            task = tasks.spawn(sender.run(), name="notifications-sender")
            # Stops before app.dev's catcher (its hook exits later): the message in flight
            # may finish.
            stack.push_async_callback(
                _stop, task, sender.stop, min(settings.shutdown_grace_s, target.timeout_s * 4)
            )
        # The same timer period as the import scheduler; the unique (tenant, week) key makes
        # every replica's scheduler safe to run at once.
        digests = DigestScheduler(
            db,
            interval_s=settings.scheduler_interval_s,
            on_queued=sender.wake if sender is not None else None,
        )
        digest_task = tasks.spawn(digests.run(), name="notifications-digest")
        stack.push_async_callback(_stop, digest_task, digests.stop, 10.0)
        yield
