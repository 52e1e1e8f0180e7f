"""The outbox sender: claims due emails with ``SKIP LOCKED`` and delivers them over SMTP.

Any number of replicas can run it against one database. A claim marks rows
``sending`` with a lease and counts an attempt; the outcome is written as soon as
each message has been handed to the server. A sender that dies mid-burst leaves
its rows ``sending`` until the lease expires, then another sender picks them up.

Two kinds of retry:
- the *message* failed transiently (4xx, dropped mid-message): that email is retried
  with exponential backoff and jitter, and ends ``failed`` after
  ``PULSE_NOTIFY_MAX_ATTEMPTS`` with the server's last answer;
- the *server* is unavailable (connect, TLS or AUTH failed): the claimed emails are
  released without using up an attempt (their ``last_error`` says why) and the sender
  pauses with its own backoff (at most a minute) before it tries again. However long
  SMTP is down, every email goes out once it is back, and none is sent twice.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from email.message import EmailMessage

import structlog
from prometheus_client import CollectorRegistry, Counter

from app.core.db import Database
from app.core.errors import is_database_unavailable
from app.modules.notifications import repository
from app.modules.notifications.repository import ClaimedEmail
from app.modules.notifications.smtp import DeliveryError, SmtpConnection, SmtpTarget, compose

log = structlog.get_logger("app.notifications.sender")

# Longest pause between probes of an unavailable SMTP server.
MAX_SERVER_PAUSE_S = 60.0


def backoff_s(attempts: int, *, base_s: float, max_s: float) -> float:
    """Exponential backoff with jitter: between half and all of ``base * 2^(n-1)``, capped."""
    ceiling: float = min(max_s, base_s * 2.0 ** min(attempts - 1, 40))
    return ceiling * random.uniform(0.5, 1.0)


class SenderMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.emails = Counter(
            "pulse_emails",
            "Outbox emails handled by this process, by kind and outcome (sent, retry, failed).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.server_unavailable = Counter(
            "pulse_smtp_unavailable",
            "Times the SMTP server could not be reached or refused the session.",
            registry=registry,
        )


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
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.db = db
        self.target = target
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.metrics = SenderMetrics(registry)
        # Long enough for a whole burst, each message bounded by the SMTP timeouts.
        self.lease_s = target.timeout_s * 4 * (batch_size + 2) + 30
        # Consecutive times the server was unavailable; > 0 means paused between probes.
        self.server_failures = 0
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
            if self.server_failures:
                pause = backoff_s(
                    self.server_failures,
                    base_s=self.retry_base_s,
                    max_s=min(self.retry_max_s, MAX_SERVER_PAUSE_S),
                )
                await self._idle(pause, wakeable=False)
            elif handled == 0:
                await self._idle(self.poll_interval_s, wakeable=True)
        log.info("notifications.sender_stopped")

    async def _idle(self, seconds: float, *, wakeable: bool) -> None:
        """Wait ``seconds``; a stop always ends the wait, a wake-up only if ``wakeable``."""
        if wakeable:
            self._wake.clear()
        event = self._wake if wakeable else self._stopping
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            pass

    async def drain_once(self) -> int:
        """Claim one burst of due emails and deliver it; returns how many were claimed."""
        async with self.db.session(all_tenants=True) as session:
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
        unavailable: str | None = None
        try:
            for email in claimed:
                if self._stopping.is_set():
                    break
                try:
                    await connection.send(self._compose(email), email.recipient)
                except DeliveryError as exc:
                    if exc.at_connect:
                        unavailable = exc.reason
                        break
                    await self._record_failure(email, exc)
                else:
                    self.server_failures = 0
                    await self._record_sent(email)
                done += 1
        finally:
            # Untried emails go back without using an attempt (shielded: this also runs
            # when the task is cancelled, and must reach the database).
            await asyncio.shield(self._release(claimed[done:], unavailable))
            await connection.close()
        if unavailable is not None:
            self.server_failures += 1
            self.metrics.server_unavailable.inc()
            log.warning(
                "notifications.smtp_unavailable",
                error=unavailable,
                consecutive=self.server_failures,
                released=len(claimed) - done,
            )

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
        async with self.db.session(email.tenant_id) as session:
            await repository.mark_sent(
                session, email.id, f"<{email.id}@{self.target.local_hostname}>"
            )
            await session.commit()
        self.metrics.emails.labels(email.kind, "sent").inc()
        log.info(
            "email.sent",
            email_id=str(email.id),
            tenant_id=email.tenant_id,
            kind=email.kind,
            attempts=email.attempts,
        )

    async def _record_failure(self, email: ClaimedEmail, exc: DeliveryError) -> None:
        final = exc.permanent or email.attempts >= self.max_attempts
        async with self.db.session(email.tenant_id) as session:
            if final:
                await repository.mark_failed(session, email.id, exc.reason)
            else:
                delay = backoff_s(email.attempts, base_s=self.retry_base_s, max_s=self.retry_max_s)
                await repository.mark_retry(session, email.id, exc.reason, delay)
            await session.commit()
        self.metrics.emails.labels(email.kind, "failed" if final else "retry").inc()
        (log.error if final else log.warning)(
            "email.failed" if final else "email.retry_scheduled",
            email_id=str(email.id),
            tenant_id=email.tenant_id,
            kind=email.kind,
            attempts=email.attempts,
            permanent=exc.permanent,
            error=exc.reason,
        )

    async def _release(self, emails: Sequence[ClaimedEmail], error: str | None) -> None:
        if not emails:
            return
        async with self.db.session(all_tenants=True) as session:
            await repository.release(session, [e.id for e in emails], error)
            await session.commit()
        log.debug("notifications.claims_released", count=len(emails))
