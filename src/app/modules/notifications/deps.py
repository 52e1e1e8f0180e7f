"""Typed dependencies of the notifications routes."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import Provide

from app.modules.notifications.sender import OutboxSender


class SenderWakeUp:
    """Wakes this process's outbox sender after a response (so after the commit that
    queued an email); a no-op where no sender runs (no SMTP configured)."""

    def __init__(self, sender: OutboxSender | None) -> None:
        self._sender = sender

    async def __call__(self) -> None:
        # Async so that Litestar runs it on the loop (a sync background task goes to a
        # thread, where setting the sender's asyncio event is not safe).
        if self._sender is not None:
            self._sender.wake()


def provide_sender_wake_up(state: State) -> SenderWakeUp:
    return SenderWakeUp(getattr(state, "notifications_sender", None))


dependencies = {"sender_wake_up": Provide(provide_sender_wake_up, sync_to_thread=False)}
