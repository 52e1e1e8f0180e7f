"""The development SMTP catcher: an aiosmtpd server on loopback that keeps what it receives.

Only started with ``PULSE_ENV=development`` and no ``PULSE_SMTP_HOST``. Messages are
kept in memory (the most recent ones), logged, and readable at ``GET /api/v1/dev/mail``
(JSON) and ``GET /dev/mail`` (a page, newest first).
"""

from __future__ import annotations

import asyncio
import html
import itertools
from collections import deque
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Annotated, Any

import msgspec
import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session
from litestar import Response, get
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.params import QueryParameter

from app.core.errors import error_responses

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


PAGE_HEADERS = {
    # The emails' HTML is shown as text: no script, style or image of a message runs.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


def _message_html(message: CaughtMessage) -> str:
    when = message.received_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"<article class='mail' id='mail-{message.id}'>"
        f"<h2>{html.escape(message.subject) or '(no subject)'}</h2>"
        f"<p class='muted'>#{message.id} &middot; {when} &middot; from"
        f" {html.escape(message.mail_from)} to {html.escape(', '.join(message.recipients))}</p>"
        f"<pre>{html.escape(message.text)}</pre></article>"
    )


def render_mail_page(messages: list[CaughtMessage], smtp_port: int) -> str:
    """The caught emails as one HTML page (newest first); every value is escaped."""
    body = "".join(_message_html(m) for m in messages) or (
        "<p class='empty'>No email caught yet. Queue one with"
        " <code>POST /api/v1/tenants/{tenant_id}/notifications/test</code>.</p>"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>Caught emails - Pulse development</title>"
        "<link rel='stylesheet' href='/static/pulse.css'></head>"
        "<body class='dev-mail'><main>"
        f"<h1>Caught emails ({len(messages)})</h1>"
        f"<p class='muted'>Development SMTP catcher on 127.0.0.1:{smtp_port}; the most"
        " recent 200 are kept in memory until the process stops. JSON:"
        " <a href='/api/v1/dev/mail'>/api/v1/dev/mail</a>.</p>"
        f"{body}</main></body></html>"
    )


def dev_mail_page_handler() -> HTTPRouteHandler:
    """``GET /dev/mail``: registered by the lifespan only while the catcher runs."""

    def caught_mail_page(state: State) -> Response[str]:
        catcher: MailCatcher = state.mail_catcher
        page = render_mail_page(catcher.recent(200), catcher.port)
        return Response(page, media_type="text/html", headers=PAGE_HEADERS)

    return get(
        "/dev/mail",
        operation_id="caughtMailPage",
        tags=["development"],
        summary="Emails caught by the development SMTP catcher, as a page (development only)",
        opt={"public": True},
        include_in_schema=False,
        sync_to_thread=False,
    )(caught_mail_page)


Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Page size")]


def dev_mail_handler() -> HTTPRouteHandler:
    """A new handler for the development mailbox, registered by the lifespan only while the
    catcher runs (one per app, so several apps in one process do not share it)."""

    def list_caught_mail(state: State, limit: Limit = 50) -> list[CaughtMessage]:
        catcher: MailCatcher = state.mail_catcher
        return catcher.recent(limit)

    return get(
        "/api/v1/dev/mail",
        operation_id="listCaughtMail",
        tags=["development"],
        summary="Emails caught by the development SMTP catcher (development only)",
        responses=error_responses(400),
        opt={"public": True},
        sync_to_thread=False,
    )(list_caught_mail)
