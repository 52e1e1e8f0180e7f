"""The outbox sender against a real SMTP server (aiosmtpd, STARTTLS, AUTH) on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import structlog
from sqlalchemy import select

from app.core.db import Database
from app.core.logging import configure_logging
from app.core.settings import Settings
from app.modules.notifications import EmailLinks, notify_run_outcome
from app.modules.notifications.models import OutboxEmail
from app.modules.notifications.sender import OutboxSender
from app.modules.notifications.smtp import target_from_settings
from tests.conftest import make_settings
from tests.fixtures.ingestion import wait_until
from tests.fixtures.smtp import SmtpTestServer, smtp_settings
from tests.notifications.conftest import MakeTenant


async def _sender(db: Database, settings: Settings) -> OutboxSender:
    target = await target_from_settings(settings)
    return OutboxSender(
        db,
        target,
        batch_size=settings.notify_batch_size,
        poll_interval_s=settings.notify_poll_interval_s,
        max_attempts=settings.notify_max_attempts,
        retry_base_s=settings.notify_retry_base_s,
        retry_max_s=settings.notify_retry_max_s,
    )


@pytest.fixture
def smtp_app_settings(database_url: str, smtp_server: SmtpTestServer) -> Settings:
    return make_settings(database_url, **smtp_settings(smtp_server))


@pytest.fixture
async def running_sender(db: Database, smtp_app_settings: Settings) -> AsyncIterator[OutboxSender]:
    sender = await _sender(db, smtp_app_settings)
    task = asyncio.create_task(sender.run(), name="test-sender")
    try:
        yield sender
    finally:
        sender.stop()
        await asyncio.wait_for(task, timeout=10)


async def _fail_run(
    db: Database, *, source_name: str = "GA4 property", run_id: uuid.UUID | None = None
) -> uuid.UUID:
    run_id = run_id or uuid.uuid4()
    async with db.session(all_tenants=True) as session:
        await notify_run_outcome(
            session,
            tenant_id="acme",
            run_id=run_id,
            source_id=uuid.uuid4(),
            source_name=source_name,
            status="failed",
            attempts=5,
            error="BigQuery said: Access Denied: Dataset analytics_123",
            finished_at=datetime(2026, 11, 27, 7, 5, tzinfo=UTC),
            links=EmailLinks("https://pulse.example"),
            previous_failures=0,
        )
        await session.commit()
    return run_id


async def _outbox(db: Database) -> list[OutboxEmail]:
    async with db.session(all_tenants=True) as session:
        return list((await session.execute(select(OutboxEmail))).scalars().all())


async def _wait_outbox(db: Database, predicate: object, timeout: float = 10.0) -> list[OutboxEmail]:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while True:
            rows = await _outbox(db)
            if predicate(rows):
                return rows
            await asyncio.sleep(0.02)  # polling a condition under a deadline


async def test_failing_run_produces_exactly_one_email_with_the_right_content(
    db: Database,
    tenant_with_recipients: MakeTenant,
    smtp_server: SmtpTestServer,
    running_sender: OutboxSender,
) -> None:
    await tenant_with_recipients(recipients=["ops@acme.test"])
    run_id = await _fail_run(db)
    await _fail_run(db, run_id=run_id)  # reported twice: still one email

    [mail] = await smtp_server.wait_for(1)
    rows = await _wait_outbox(db, lambda rows: all(r.status == "sent" for r in rows))
    assert len(rows) == 1
    assert rows[0].attempts == 1

    assert mail.recipients == ["ops@acme.test"]
    assert mail.mail_from == "alerts@pulse.test"
    assert mail.subject == "[Pulse] Import failed: GA4 property"
    assert mail.message["To"] == "ops@acme.test"
    assert mail.message["From"] == "Pulse Alerts <alerts@pulse.test>"
    assert mail.message.get_content_type() == "multipart/alternative"
    text = mail.body("plain")
    html = mail.body("html")
    for body in (text, html):
        assert "GA4 property" in body
        assert "Access Denied: Dataset analytics_123" in body
        assert f"/api/v1/tenants/acme/runs/{run_id}" in body
        assert "2026-11-27 08:05 CET" in body
    assert "Attempts:  5" in text
    assert smtp_server.auth_attempts >= 1

    # Nothing else arrives later.
    await running_sender.drain_once()
    assert len(smtp_server.received) == 1


async def test_smtp_down_then_up_delivers_every_queued_email_exactly_once(
    db: Database,
    tenant_with_recipients: MakeTenant,
    smtp_server: SmtpTestServer,
    running_sender: OutboxSender,
) -> None:
    await tenant_with_recipients(recipients=["ops@acme.test", "lead@acme.test"])
    await smtp_server.stop()
    runs = [await _fail_run(db, source_name=f"source {i}") for i in range(5)]

    # The sender keeps probing the server; the emails wait without using up attempts.
    rows = await _wait_outbox(
        db,
        lambda rows: (
            len(rows) == 10
            and running_sender.server_failures >= 3
            and all(r.last_error and "connecting to 127.0.0.1" in r.last_error for r in rows)
        ),
    )
    assert all(r.status == "pending" and r.attempts == 0 for r in rows)

    await smtp_server.start()
    await smtp_server.wait_for(10)
    rows = await _wait_outbox(db, lambda rows: all(r.status == "sent" for r in rows))
    assert all(r.attempts == 1 for r in rows)
    await running_sender.drain_once()

    delivered = sorted((m.recipients[0], m.subject) for m in smtp_server.received)
    expected = sorted(
        (address, f"[Pulse] Import failed: source {i}")
        for i in range(5)
        for address in ("ops@acme.test", "lead@acme.test")
    )
    assert delivered == expected  # all of them, none twice
    bodies = "".join(m.body("plain") for m in smtp_server.received)
    assert all(str(run_id) in bodies for run_id in runs)


async def test_rejected_recipient_fails_that_email_with_the_reason_and_not_the_others(
    db: Database,
    tenant_with_recipients: MakeTenant,
    smtp_server: SmtpTestServer,
    running_sender: OutboxSender,
) -> None:
    smtp_server.reject["nobody@acme.test"] = "550 5.1.1 <nobody@acme.test>: User unknown"
    await tenant_with_recipients(recipients=["ops@acme.test", "nobody@acme.test", "lead@acme.test"])
    await _fail_run(db)

    rows = await _wait_outbox(
        db, lambda rows: len(rows) == 3 and all(r.status in ("sent", "failed") for r in rows)
    )
    by_recipient = {r.recipient: r for r in rows}
    rejected = by_recipient["nobody@acme.test"]
    assert rejected.status == "failed"
    assert rejected.attempts == 1  # a permanent refusal is not retried
    assert rejected.last_error is not None
    assert "550" in rejected.last_error
    assert "User unknown" in rejected.last_error
    assert by_recipient["ops@acme.test"].status == "sent"
    assert by_recipient["lead@acme.test"].status == "sent"
    assert sorted(m.recipients[0] for m in smtp_server.received) == [
        "lead@acme.test",
        "ops@acme.test",
    ]


async def test_transient_refusals_are_retried_then_failed_with_the_smtp_error(
    db: Database,
    database_url: str,
    tenant_with_recipients: MakeTenant,
    smtp_server: SmtpTestServer,
) -> None:
    smtp_server.reject["busy@acme.test"] = "451 4.7.1 Mailbox busy, try again later"
    settings = make_settings(
        database_url, **{**smtp_settings(smtp_server), "notify_max_attempts": 3}
    )
    await tenant_with_recipients(recipients=["busy@acme.test"])
    await _fail_run(db)
    sender = await _sender(db, settings)
    task = asyncio.create_task(sender.run())
    try:
        [row] = await _wait_outbox(db, lambda rows: rows and rows[0].status == "failed")
    finally:
        sender.stop()
        await asyncio.wait_for(task, 10)
    assert row.attempts == 3
    assert row.last_error == "451 4.7.1 Mailbox busy, try again later (recipient busy@acme.test)"
    assert smtp_server.received == []


async def test_bad_smtp_credentials_keep_emails_queued_with_the_reason(
    db: Database,
    database_url: str,
    tenant_with_recipients: MakeTenant,
    smtp_server: SmtpTestServer,
) -> None:
    settings = make_settings(
        database_url,
        **{**smtp_settings(smtp_server), "smtp_password": "wrong", "notify_max_attempts": 2},
    )
    await tenant_with_recipients()
    await _fail_run(db)
    sender = await _sender(db, settings)
    task = asyncio.create_task(sender.run())
    try:
        [row] = await _wait_outbox(
            db, lambda rows: sender.server_failures >= 3 and rows[0].last_error is not None
        )
    finally:
        sender.stop()
        await asyncio.wait_for(task, 10)
    assert row.status == "pending"  # a server-side problem does not use up the email
    assert row.attempts == 0
    assert row.last_error is not None
    assert "535" in row.last_error
    assert smtp_server.received == []


async def test_two_senders_on_separate_engines_deliver_each_email_once(
    db: Database,
    database_url: str,
    tenant_with_recipients: MakeTenant,
    smtp_server: SmtpTestServer,
    smtp_app_settings: Settings,
) -> None:
    await tenant_with_recipients(recipients=[f"user{i}@acme.test" for i in range(8)])
    for i in range(5):
        await _fail_run(db, source_name=f"source {i}")
    other_db = Database.from_settings(smtp_app_settings, database_url)
    small_batches = msgspec.structs.replace(smtp_app_settings, notify_batch_size=3)
    senders = [await _sender(db, small_batches), await _sender(other_db, small_batches)]
    tasks = [asyncio.create_task(s.run()) for s in senders]
    try:
        await smtp_server.wait_for(40)
        await _wait_outbox(db, lambda rows: all(r.status == "sent" for r in rows))
    finally:
        for s in senders:
            s.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        await other_db.dispose()
    keys = [(m.recipients[0], m.subject) for m in smtp_server.received]
    assert len(keys) == 40
    assert len(set(keys)) == 40


async def test_email_of_a_sender_that_died_mid_flight_is_sent_after_its_lease(
    db: Database,
    tenant_with_recipients: MakeTenant,
    smtp_server: SmtpTestServer,
    smtp_app_settings: Settings,
) -> None:
    from app.modules.notifications import repository

    sender = await _sender(db, smtp_app_settings)
    await tenant_with_recipients()
    await _fail_run(db)
    async with db.session(all_tenants=True) as session:
        [claimed] = await repository.claim_due(session, owner="dead-sender", limit=10, lease_s=0.2)
        await session.commit()
    # The "dead" sender never reports back; another one picks the email up after the lease.
    assert await sender.drain_once() == 0
    [row] = await _outbox(db)
    assert row.status == "sending"
    async with asyncio.timeout(5):
        while await sender.drain_once() == 0:
            await asyncio.sleep(0.05)
    assert len(await smtp_server.wait_for(1)) == 1
    [row] = await _outbox(db)
    assert row.status == "sent"
    assert row.attempts == 2
    assert claimed.id == row.id


async def test_every_log_line_about_an_email_carries_its_outbox_id(
    db: Database,
    database_url: str,
    tenant_with_recipients: MakeTenant,
    smtp_server: SmtpTestServer,
    smtp_app_settings: Settings,
) -> None:
    await tenant_with_recipients(recipients=["ops@acme.test", "cto@acme.test"])
    await _fail_run(db)
    sender = await _sender(db, smtp_app_settings)
    ids = {str(row.id) for row in await _outbox(db)}
    assert len(ids) == 2

    # The real handler (JSON lines), as in production; the lines carry no explicit id.
    stream = io.StringIO()
    configure_logging(
        make_settings(database_url, log_format="json", log_level="INFO"), stream=stream
    )
    try:
        await sender.drain_once()

        def sent() -> list[dict[str, Any]]:
            lines = [json.loads(x) for x in stream.getvalue().splitlines() if x.startswith("{")]
            return [line for line in lines if line["event"] == "email.sent"]

        async def both_logged() -> bool:
            return len(sent()) == 2

        await wait_until(both_logged, timeout_s=10)
    finally:
        configure_logging(make_settings(database_url))
    assert {line.get("email_id") for line in sent()} == ids
    assert all(line.get("tenant_id") == "acme" for line in sent())
    # The binding ends with the email: nothing leaks into what this task logs next.
    assert "email_id" not in structlog.contextvars.get_contextvars()
