"""The outbox sender: claims due emails with ``SKIP LOCKED`` and delivers them over SMTP.

Any number of replicas can run it against one database. A claim marks rows
``sending`` with a lease held by this sender and counts an attempt; the outcome is
written as soon as each message has been handed to the server. The lease covers one
message at a time (the SMTP timeouts of one send, about a minute with the defaults) and
is renewed before each message of the burst, so a sender that dies mid-burst leaves
its rows ``sending`` for at most that long, then another sender picks them up.

An email the server accepted is never requeued by this sender: it is counted as done
before its ``sent`` state is written, and if writing fails (the database is away) the
sender keeps the acceptance in memory and records it before it claims anything else.
Every state change checks the lease owner, so a sender that lost its lease changes
nothing. Each email keeps one ``Message-ID`` (from its outbox id) across attempts.

Two kinds of retry:
- the *message* failed transiently (4xx, dropped mid-message): that email is retried
  with exponential backoff and jitter, and ends ``failed`` after
  ``PULSE_NOTIFY_MAX_ATTEMPTS`` with the server's last answer;
- the *server* is unavailable (connect, TLS or AUTH failed): the claimed emails are
  released without using up an attempt (their ``last_error`` says why) and the sender
  pauses with its own backoff (at most a minute) before it tries again. However long
  SMTP is down, every email goes out once it is back, and none the server accepted is
  sent again. (When the server's reply to a message is lost, the outbox cannot know it
  was accepted and retries it: that copy has the same ``Message-ID``.)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from email.message import EmailMessage

import structlog
from prometheus_client import CollectorRegistry, Counter

from app.core.backoff import backoff_s
from app.core.db import Database
from app.core.errors import is_database_unavailable
from app.modules.notifications import repository
from app.modules.notifications.repository import ClaimedEmail
from app.modules.notifications.smtp import (
    DeliveryError,
    SmtpConnection,
    SmtpTarget,
    compose,
    message_id_for,
)

log = structlog.get_logger("app.notifications.sender")

# Longest pause between probes of an unavailable SMTP server.
MAX_SERVER_PAUSE_S = 60.0
# Lease time beyond the SMTP bound of one step, for the database writes around it.
LEASE_MARGIN_S = 20.0


def _log_context(email: ClaimedEmail) -> dict[str, str]:
    """What every line logged about one email carries: its outbox id, its tenant and the
    id of the request that queued it (if a request did)."""
    context = {"email_id": str(email.id), "tenant_id": email.tenant_id}
    if email.request_id:
        context["request_id"] = email.request_id
    return context


def lease_for(timeout_s: float) -> float:
    """A lease that covers one bounded SMTP step (connect or one message: each at most
    ``4 * timeout_s``) plus the database writes around it; renewed before every message."""
    return timeout_s * 4 + LEASE_MARGIN_S


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
        # Sized to the work claimed: one message at a time (renewed before each).
        self.lease_s = lease_for(target.timeout_s)
        # Identifies this sender's leases (unique per process and sender).
        self.owner = f"sender-{uuid.uuid4().hex}"
        # Emails the server accepted whose "sent" state could not be written yet.
        self.unrecorded: dict[uuid.UUID, ClaimedEmail] = {}
        self._lease_until = 0.0
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
        if self.unrecorded:
            try:
                await self.record_pending()
            except Exception:
                log.exception("notifications.sent_state_lost", count=len(self.unrecorded))
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
        # Acceptances not written yet come first: nothing new is claimed until they are.
        await self.record_pending()
        async with self.db.session(all_tenants=True) as session:
            claimed = await repository.claim_due(
                session, owner=self.owner, limit=self.batch_size, lease_s=self.lease_s
            )
            await session.commit()
        self._lease_until = time.monotonic() + self.lease_s
        if claimed:
            await self._deliver(claimed)
        return len(claimed)

    async def record_pending(self) -> None:
        """Write the ``sent`` state of emails accepted earlier (raises while the DB is away)."""
        for email in list(self.unrecorded.values()):
            with structlog.contextvars.bound_contextvars(**_log_context(email)):
                await self._write_sent(email)
            del self.unrecorded[email.id]

    async def _deliver(self, claimed: Sequence[ClaimedEmail]) -> None:
        connection = SmtpConnection(self.target)
        done = 0
        unavailable: str | None = None
        try:
            for index, email in enumerate(claimed):
                # Every line logged for this email (the SMTP client's too) carries its id.
                with structlog.contextvars.bound_contextvars(**_log_context(email)):
                    if self._stopping.is_set():
                        break
                    if not connection.is_open:
                        try:
                            await connection.open()
                        except DeliveryError as exc:
                            unavailable = exc.reason
                            break
                    if not await self._hold(claimed[index:]):
                        break
                    try:
                        await connection.send(self._compose(email), email.recipient)
                    except DeliveryError as exc:
                        if exc.at_connect:
                            unavailable = exc.reason
                            break
                        await self._record_failure(email, exc)
                        done += 1
                    else:
                        # Accepted: from here on this email is never put back in the queue.
                        done += 1
                        self.server_failures = 0
                        if not await self._record_sent(email):
                            break
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

    async def _hold(self, remaining: Sequence[ClaimedEmail]) -> bool:
        """Make the lease cover the next message; False if it can't (stop the burst)."""
        if self._lease_until - time.monotonic() > self.target.timeout_s * 4 + 5:
            return True  # still covers one SMTP step (4 timeouts) with room to spare
        async with self.db.session(all_tenants=True) as session:
            held = await repository.renew_leases(
                session, [e.id for e in remaining], owner=self.owner, lease_s=self.lease_s
            )
            await session.commit()
        self._lease_until = time.monotonic() + self.lease_s
        if remaining[0].id not in held:
            log.warning("notifications.lease_lost", email_id=str(remaining[0].id))
            return False
        return True

    def _compose(self, email: ClaimedEmail) -> EmailMessage:
        return compose(
            self.target,
            email_id=email.id,
            recipient=email.recipient,
            subject=email.subject,
            text=email.body_text,
            html=email.body_html,
            kind=email.kind,
        )

    async def _record_sent(self, email: ClaimedEmail) -> bool:
        """Write the acceptance; on failure keep it for :meth:`record_pending` (False)."""
        try:
            await self._write_sent(email)
        except Exception as exc:
            self.unrecorded[email.id] = email
            log.warning("notifications.sent_state_deferred", error=type(exc).__name__)
            return False
        return True

    async def _write_sent(self, email: ClaimedEmail) -> None:
        async with self.db.session(email.tenant_id) as session:
            held = await repository.mark_sent(
                session, email.id, message_id_for(email.id, self.target), owner=self.owner
            )
            await session.commit()
        if not held:
            # Another sender took the row over after our lease expired: nothing to write.
            log.warning("notifications.sent_after_lease_lost")
            return
        self.metrics.emails.labels(email.kind, "sent").inc()
        # email_id, tenant_id and request_id come from the context bound per email (_deliver).
        log.info(
            "email.sent",
            kind=email.kind,
            attempts=email.attempts,
        )

    async def _record_failure(self, email: ClaimedEmail, exc: DeliveryError) -> None:
        final = exc.permanent or email.attempts >= self.max_attempts
        async with self.db.session(email.tenant_id) as session:
            if final:
                await repository.mark_failed(session, email.id, exc.reason, owner=self.owner)
            else:
                delay = backoff_s(email.attempts, base_s=self.retry_base_s, max_s=self.retry_max_s)
                await repository.mark_retry(session, email.id, exc.reason, delay, owner=self.owner)
            await session.commit()
        self.metrics.emails.labels(email.kind, "failed" if final else "retry").inc()
        (log.error if final else log.warning)(
            "email.failed" if final else "email.retry_scheduled",
            kind=email.kind,
            attempts=email.attempts,
            permanent=exc.permanent,
            error=exc.reason,
        )

    async def _release(self, emails: Sequence[ClaimedEmail], error: str | None) -> None:
        if not emails:
            return
        async with self.db.session(all_tenants=True) as session:
            await repository.release(session, [e.id for e in emails], error, owner=self.owner)
            await session.commit()
        log.debug("notifications.claims_released", count=len(emails))
