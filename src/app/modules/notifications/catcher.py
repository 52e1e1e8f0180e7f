"""The development SMTP catcher: an aiosmtpd server on loopback that keeps what it receives.

Only started with ``PULSE_ENV=development`` and no ``PULSE_SMTP_HOST``. Messages are
kept in memory (the most recent ones), logged, and readable at ``GET /api/v1/dev/mail``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import msgspec
import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

log = structlog.get_logger("app.notifications.catcher")


class CaughtMessage(msgspec.Struct, kw_only=True):
    id: int
    received_at: datetime
    mail_from: str
    recipients: list[str]
    subject: str
    text: str
    html: str | None


def _part(message: EmailMessage, subtype: str) -> str | None:
    body = message.get_body(preferencelist=(subtype,))
    if body is None:
        return None
    content: Any = body.get_content()
    return content if isinstance(content, str) else None


def parse_message(
    raw: bytes, *, message_id: int, mail_from: str, recipients: list[str]
) -> CaughtMessage:
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    return CaughtMessage(
        id=message_id,
        received_at=datetime.now(UTC),
        mail_from=mail_from,
        recipients=recipients,
        subject=str(parsed.get("Subject", "")),
        text=_part(parsed, "plain") or "",
        html=_part(parsed, "html"),
    )


class MailCatcher:
    """aiosmtpd handler + server lifecycle, on the app's own event loop."""

    def __init__(self, *, keep: int = 200) -> None:
        self.messages: deque[CaughtMessage] = deque(maxlen=keep)
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self.port = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        data = raw if isinstance(raw, bytes) else str(raw).encode()
        caught = parse_message(
            data,
            message_id=next(self._ids),
            mail_from=str(envelope.mail_from),
            recipients=[str(r) for r in envelope.rcpt_tos],
        )
        self.messages.append(caught)
        log.info(
            "email.caught",
            id=caught.id,
            to=caught.recipients,
            subject=caught.subject,
            text=caught.text[:2000],
        )
        return "250 Message accepted for delivery"

    async def start(self, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            # hostname given: aiosmtpd would otherwise call socket.getfqdn() (blocking DNS).
            lambda: SMTP(self, hostname="pulse-catcher", ident="Pulse development catcher"),
            host="127.0.0.1",
            port=port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("notifications.catcher_started", host="127.0.0.1", port=self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        try:
            async with asyncio.timeout(5):
                await self._server.wait_closed()
        except TimeoutError:
            log.warning("notifications.catcher_stop_timeout")
        self._server = None

    def recent(self, limit: int = 50) -> list[CaughtMessage]:
        return list(reversed(self.messages))[:limit]
