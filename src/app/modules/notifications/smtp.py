"""SMTP delivery through aiosmtplib: one connection per burst, a timeout on every call.

Errors are sorted three ways: *permanent* (the server refused this message for good:
a 5xx for the recipient, sender or data), *transient* for the message (4xx, a
connection dropped mid-message, a timeout) and *server unavailable* (connect, TLS or
AUTH failed before the message was tried), which says nothing about the message.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from types import TracebackType
from typing import Self

import aiosmtplib
import structlog

from app.core.settings import Settings, SmtpSecurity
from app.modules.notifications.templates import one_line

log = structlog.get_logger("app.notifications.smtp")


class DeliveryError(Exception):
    """A message could not be delivered.

    ``permanent``: the server refused this message for good (5xx). ``at_connect``: the
    server could not be reached or refused the session (connect, TLS, AUTH) - nothing
    about this message was tried, so it says nothing about the message itself.
    """

    def __init__(self, reason: str, *, permanent: bool, at_connect: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.at_connect = at_connect


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    """Where and how to deliver; built once at start-up (the TLS context reads files)."""

    host: str
    port: int
    security: SmtpSecurity
    username: str | None
    password: str | None
    timeout_s: float
    from_header: str
    envelope_from: str
    local_hostname: str
    tls_context: ssl.SSLContext | None


def _from_parts(smtp_from: str) -> tuple[str, str]:
    """The From header (no control characters) and the bare envelope address."""
    header = one_line(smtp_from, limit=300)
    _, address = parseaddr(header)
    if "@" not in address:
        raise ValueError(f"PULSE_SMTP_FROM={smtp_from!r} has no usable address")
    return header, address


async def target_from_settings(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    security: SmtpSecurity | None = None,
    with_auth: bool = True,
) -> SmtpTarget:
    """The delivery target from ``PULSE_SMTP_*``; overrides serve the development catcher."""
    security = security or settings.smtp_security
    header, envelope = _from_parts(settings.smtp_from)
    tls_context: ssl.SSLContext | None = None
    if security != "none":
        # Reads the CA bundle from disk: off the event loop.
        tls_context = await asyncio.to_thread(
            ssl.create_default_context, cafile=settings.smtp_ca_file
        )
    return SmtpTarget(
        host=host or settings.smtp_host or "127.0.0.1",
        port=port or settings.smtp_port,
        security=security,
        username=settings.smtp_username if with_auth else None,
        password=settings.smtp_password if with_auth else None,
        timeout_s=settings.smtp_timeout_s,
        from_header=header,
        envelope_from=envelope,
        # aiosmtplib would otherwise call socket.getfqdn() (blocking DNS) for EHLO.
        local_hostname=envelope.rpartition("@")[2] or "localhost",
        tls_context=tls_context,
    )


def message_id_for(email_id: uuid.UUID, target: SmtpTarget) -> str:
    """The ``Message-ID`` of an outbox email: the same on every attempt, so a receiver that
    deduplicates by it drops a copy the outbox could not prevent."""
    return f"<{email_id}@{target.local_hostname}>"


def compose(
    target: SmtpTarget,
    *,
    email_id: uuid.UUID,
    recipient: str,
    subject: str,
    text: str,
    html: str,
    kind: str,
) -> EmailMessage:
    """A multipart/alternative message (plain text first, then HTML).

    ``email``'s SMTP policy refuses CR/LF in any header value, and every value put in a
    header here has already been flattened to one line: header injection cannot happen.
    """
    message = EmailMessage()
    message["From"] = target.from_header
    message["To"] = recipient
    message["Subject"] = one_line(subject, limit=250)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id_for(email_id, target)
    message["Auto-Submitted"] = "auto-generated"
    message["X-Pulse-Kind"] = one_line(kind, limit=32)
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        return f"{first.code} {one_line(first.message, limit=500)} (recipient {first.recipient})"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {one_line(exc.message, limit=500)}"
    text = one_line(str(exc), limit=500)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return bool(exc.recipients) and all(r.code >= 500 for r in exc.recipients)
    if isinstance(
        exc,
        aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPSenderRefused | aiosmtplib.SMTPDataError,
    ):
        return exc.code >= 500
    return False


class SmtpConnection:
    """One authenticated SMTP session, reused for a burst of messages."""

    def __init__(self, target: SmtpTarget) -> None:
        self.target = target
        self._client: aiosmtplib.SMTP | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def open(self) -> None:
        """Connect, STARTTLS/TLS as configured, authenticate; DeliveryError when it fails."""
        t = self.target
        client = aiosmtplib.SMTP(
            hostname=t.host,
            port=t.port,
            timeout=t.timeout_s,
            use_tls=t.security == "tls",
            start_tls=t.security == "starttls",
            tls_context=t.tls_context,
            local_hostname=t.local_hostname,
        )
        try:
            # aiosmtplib applies `timeout` to each step; the outer bound covers the sum.
            async with asyncio.timeout(t.timeout_s * 4):
                await client.connect(timeout=t.timeout_s)
                if t.username and t.password is not None:
                    await client.login(t.username, t.password, timeout=t.timeout_s)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise DeliveryError(
                f"connecting to {t.host}:{t.port}: {_describe(exc)}",
                permanent=False,
                at_connect=True,
            ) from exc
        self._client = client

    async def send(self, message: EmailMessage, recipient: str) -> None:
        """Send ``message`` to exactly ``recipient`` (the envelope ignores the headers)."""
        if self._client is None or not self._client.is_connected:
            await self.open()
        assert self._client is not None
        t = self.target
        try:
            async with asyncio.timeout(t.timeout_s * 4):
                await self._client.send_message(
                    message,
                    sender=t.envelope_from,
                    recipients=[recipient],
                    timeout=t.timeout_s,
                )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            lost = not self._client.is_connected or isinstance(
                exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPTimeoutError | TimeoutError
            )
            if lost:
                self._client.close()
                self._client = None
            else:
                await self._reset()
            raise DeliveryError(_describe(exc), permanent=_is_permanent(exc)) from exc

    async def _reset(self) -> None:
        # After a refusal the transaction may be half open; RSET before the next message.
        if self._client is None:
            return
        try:
            await self._client.rset(timeout=self.target.timeout_s)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self._client.close()
            self._client = None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        try:
            await client.quit(timeout=self.target.timeout_s)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            log.debug("smtp.quit_failed", error=_describe(exc))
            client.close()
