"""User-controlled values cannot add headers or markup to an email."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from app.core.db import Database
from app.core.settings import Settings
from app.modules.notifications import EmailLinks, notify_run_outcome
from app.modules.notifications.sender import OutboxSender
from app.modules.notifications.smtp import compose, target_from_settings
from app.modules.notifications.templates import one_line
from tests.conftest import make_settings
from tests.fixtures.smtp import SmtpTestServer, smtp_settings
from tests.notifications.conftest import MakeTenant

INJECTION = "Nightly\r\nBcc: attacker@evil.test\r\nX-Injected: yes\n\nbody?"


@pytest.fixture
async def sender(
    db: Database, database_url: str, smtp_server: SmtpTestServer
) -> AsyncIterator[OutboxSender]:
    settings: Settings = make_settings(database_url, **smtp_settings(smtp_server))
    sender = OutboxSender(
        db,
        await target_from_settings(settings),
        batch_size=10,
        poll_interval_s=0.05,
        max_attempts=3,
        retry_base_s=0.05,
        retry_max_s=0.1,
    )
    task = asyncio.create_task(sender.run())
    yield sender
    sender.stop()
    await asyncio.wait_for(task, 10)


async def _failed(db: Database, *, source_name: str, error: str) -> None:
    async with db.session(all_tenants=True) as session:
        await notify_run_outcome(
            session,
            tenant_id="acme",
            run_id=uuid.uuid4(),
            source_id=uuid.uuid4(),
            source_name=source_name,
            status="failed",
            attempts=2,
            error=error,
            finished_at=datetime.now(UTC),
            links=EmailLinks("https://pulse.example"),
            previous_failures=0,
        )
        await session.commit()


async def test_newlines_in_a_source_name_cannot_inject_headers_or_recipients(
    db: Database,
    tenant_with_recipients: MakeTenant,
    smtp_server: SmtpTestServer,
    sender: OutboxSender,
) -> None:
    await tenant_with_recipients(name="Acme\r\nCc: boss@evil.test", recipients=["ops@acme.test"])
    await _failed(db, source_name=INJECTION, error="line one\r\nBcc: nope@evil.test")

    [mail] = await smtp_server.wait_for(1)
    assert mail.recipients == ["ops@acme.test"]  # the envelope: nobody else gets it
    headers = {name.lower() for name in mail.message}
    assert "bcc" not in headers
    assert "cc" not in headers
    assert "x-injected" not in headers
    assert (
        # Python's folder may start a long value on a continuation line.
        mail.subject.strip()
        == "[Pulse] Import failed: Nightly Bcc: attacker@evil.test X-Injected: yes body?"
    )
    raw_headers = mail.raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in raw_headers
    assert b"\r\nX-Injected:" not in raw_headers


async def test_markup_in_user_values_is_escaped_in_html_and_kept_as_text_in_plain(
    db: Database,
    tenant_with_recipients: MakeTenant,
    smtp_server: SmtpTestServer,
    sender: OutboxSender,
) -> None:
    await tenant_with_recipients(name="<b>Acme</b>", recipients=["ops@acme.test"])
    await _failed(
        db,
        source_name="<script>alert('x')</script>",
        error='<img src=x onerror="alert(1)"> & friends',
    )
    [mail] = await smtp_server.wait_for(1)
    html = mail.body("html")
    assert "<script>" not in html
    assert "<img" not in html
    assert "<b>Acme</b>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; friends" in html
    assert "&lt;b&gt;Acme&lt;/b&gt;" in html
    text = mail.body("plain")
    assert "<script>alert('x')</script>" in text
    assert '<img src=x onerror="alert(1)"> & friends' in text


async def test_compose_flattens_every_header_value(
    smtp_server: SmtpTestServer, database_url: str
) -> None:
    target = await target_from_settings(make_settings(database_url, **smtp_settings(smtp_server)))
    message = compose(
        target,
        email_id=uuid.uuid4(),
        recipient="ops@acme.test",
        subject="Hello\nBcc: attacker@evil.test",
        text="text",
        html="<p>html</p>",
        kind="test\r\nX-Evil: 1",
    )
    assert message["Bcc"] is None
    assert message["X-Evil"] is None
    assert "\n" not in str(message["Subject"])
    assert message.is_multipart()
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


def test_one_line_removes_every_kind_of_line_break() -> None:
    assert one_line("a\r\nb\nc\rd\x0be\x0cf\x85g\u2028h\u2029i\x00j") == "a b c d e f g h i j"
    assert len(one_line("x" * 1000, limit=50)) == 50
