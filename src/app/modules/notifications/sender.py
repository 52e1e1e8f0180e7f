"""The outbox sender: claims due emails with ``SKIP LOCKED`` and delivers them over SMTP.

Any number of replicas can run it against one database. A claim marks rows
``sending`` with a lease and counts an attempt; the outcome is written as soon as
each message has been handed to the server. A sender that dies mid-burst leaves
its rows ``sending`` until the lease expires, then another sender picks them up.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from email.message import EmailMessage

import structlog

from app.core.db import Database
from app.core.errors import is_database_unavailable
from app.modules.notifications import repository
from app.modules.notifications.repository import ClaimedEmail
from app.modules.notifications.smtp import DeliveryError, SmtpConnection, SmtpTarget, compose

log = structlog.get_logger("app.notifications.sender")


def backoff_s(attempts: int, *, base_s: float, max_s: float) -> float:
    """Exponential backoff with jitter: between half and all of ``base * 2^(n-1)``, capped."""
    ceiling: float = min(max_s, base_s * 2.0 ** min(attempts - 1, 40))
    return ceiling * random.uniform(0.5, 1.0)


class OutboxSender:
    def __init__(
        self,
        db: Database,
        target: SmtpTarget,
        *,
        batch_size: int,
        poll_interval_s: float,
        max_attempts: int,
        retry_base_s: float,
        retry_max_s: float,
    ) -> None:
        self.db = db
        self.target = target
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        # Long enough for a whole burst, each message bounded by the SMTP timeouts.
        self.lease_s = target.timeout_s * 4 * (batch_size + 2) + 30
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def wake(self) -> None:
        """Look for due emails now instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the message in flight, release the rest of the burst, and return."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        log.info("notifications.sender_started", host=self.target.host, port=self.target.port)
        while not self._stopping.is_set():
            try:
                handled = await self.drain_once()
            except Exception as exc:
                handled = 0
                if is_database_unavailable(exc):
                    log.warning("notifications.sender_db_unavailable", error=type(exc).__name__)
                else:
                    log.exception("notifications.sender_error")
            if handled == 0 and not self._stopping.is_set():
                self._wake.clear()
                try:
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        log.info("notifications.sender_stopped")

    async def drain_once(self) -> int:
        """Claim one burst of due emails and deliver it; returns how many were claimed."""
        async with self.db.session() as session:
            claimed = await repository.claim_due(
                session, limit=self.batch_size, lease_s=self.lease_s
            )
            await session.commit()
        if claimed:
            await self._deliver(claimed)
        return len(claimed)

    async def _deliver(self, claimed: Sequence[ClaimedEmail]) -> None:
        connection = SmtpConnection(self.target)
        done = 0
        try:
            for email in claimed:
                if self._stopping.is_set():
                    break
                try:
                    await connection.send(self._compose(email), email.recipient)
                except DeliveryError as exc:
                    await self._record_failure(email, exc)
                    done += 1
                    if exc.connection_lost and not connection.is_open:
                        # The server is unreachable: the rest of the burst waits too.
                        rest = claimed[done:]
                        await self._defer(rest, exc)
                        done += len(rest)
                        break
                    continue
                await self._record_sent(email)
                done += 1
        finally:
            await asyncio.shield(self._release(claimed[done:]))
            await connection.close()

    def _compose(self, email: ClaimedEmail) -> EmailMessage:
        return compose(
            self.target,
            message_id=str(email.id),
            recipient=email.recipient,
            subject=email.subject,
            text=email.body_text,
            html=email.body_html,
            kind=email.kind,
        )

    async def _record_sent(self, email: ClaimedEmail) -> None:
        async with self.db.session() as session:
            await repository.mark_sent(
                session, email.id, f"<{email.id}@{self.target.local_hostname}>"
            )
            await session.commit()
        log.info(
            "email.sent",
            email_id=str(email.id),
            tenant_id=email.tenant_id,
            kind=email.kind,
            attempts=email.attempts,
        )

    async def _record_failure(self, email: ClaimedEmail, exc: DeliveryError) -> None:
        final = exc.permanent or email.attempts >= self.max_attempts
        async with self.db.session() as session:
            if final:
                await repository.mark_failed(session, email.id, exc.reason)
            else:
                delay = backoff_s(email.attempts, base_s=self.retry_base_s, max_s=self.retry_max_s)
                await repository.mark_retry(session, email.id, exc.reason, delay)
            await session.commit()
        (log.error if final else log.warning)(
            "email.failed" if final else "email.retry_scheduled",
            email_id=str(email.id),
            tenant_id=email.tenant_id,
            kind=email.kind,
            attempts=email.attempts,
            permanent=exc.permanent,
            error=exc.reason,
        )

    async def _defer(self, emails: Sequence[ClaimedEmail], exc: DeliveryError) -> None:
        for email in emails:
            await self._record_failure(email, exc)

    async def _release(self, emails: Sequence[ClaimedEmail]) -> None:
        """Give back claimed emails that were never tried (shutdown mid-burst)."""
        if not emails:
            return
        ids: list[uuid.UUID] = [e.id for e in emails]
        async with self.db.session() as session:
            await repository.release(session, ids)
            await session.commit()
        log.info("notifications.claims_released", count=len(ids))
