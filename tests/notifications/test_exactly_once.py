"""An email the SMTP server accepted is never sent again, whatever fails after it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import msgspec
import pytest
from sqlalchemy import select

from app.core.db import Database
from app.core.settings import Settings
from app.modules.notifications import repository
from app.modules.notifications.models import OutboxEmail
from app.modules.notifications.sender import OutboxSender, lease_for
from tests.conftest import make_settings
from tests.fixtures.smtp import SmtpTestServer, smtp_settings
from tests.notifications.conftest import MakeTenant
from tests.notifications.test_delivery import _fail_run, _outbox, _sender


@pytest.fixture
def smtp_app_settings(database_url: str, smtp_server: SmtpTestServer) -> Settings:
    return make_settings(database_url, **smtp_settings(smtp_server))


async def _drain_until_all_sent(sender: OutboxSender, db: Database) -> list[OutboxEmail]:
    """Drive the sender the way its loop does (errors logged, tried again) until done."""
    async with asyncio.timeout(20):
        while True:
            with contextlib.suppress(ConnectionResetError):  # the loop logs it, tries again
                await sender.drain_once()
            rows = await _outbox(db)
            if rows and all(r.status == "sent" for r in rows) and not sender.unrecorded:
                return rows
            await asyncio.sleep(0.02)  # polling a condition under a deadline


async def test_email_accepted_before_recording_failed_is_delivered_exactly_once(
    db: Database,
    tenant_with_recipients: MakeTenant,
    smtp_server: SmtpTestServer,
    smtp_app_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await tenant_with_recipients(recipients=["first@acme.test", "second@acme.test"])
    await _fail_run(db)
    sender = await _sender(db, smtp_app_settings)

    # The one fault a real database will not produce on cue: the connection drops right
    # after the SMTP server accepted the first email, before its "sent" state is written.
    real_mark_sent = repository.mark_sent
    failures = {"left": 2}

    async def flaky_mark_sent(*args: Any, **kwargs: Any) -> bool:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionResetError("connection to the database was lost")
        return await real_mark_sent(*args, **kwargs)

    monkeypatch.setattr(repository, "mark_sent", flaky_mark_sent)

    rows = await _drain_until_all_sent(sender, db)

    assert sorted(m.recipients[0] for m in smtp_server.received) == [
        "first@acme.test",
        "second@acme.test",
    ]
    assert failures["left"] == 0
    assert [r.attempts for r in rows] == [1, 1]
    for row in rows:
        [mail] = smtp_server.to(row.recipient)
        # The Message-ID recorded is the one sent, derived from the outbox id.
        assert row.message_id == mail.message["Message-ID"]
        assert str(row.id) in row.message_id
        assert row.lease_owner is None
    # Nothing is left to go out again.
    assert await sender.drain_once() == 0
    assert len(smtp_server.received) == 2


async def test_a_sender_that_lost_its_lease_changes_nothing(
    db: Database, tenant_with_recipients: MakeTenant
) -> None:
    await tenant_with_recipients()
    await _fail_run(db)
    async with db.session(all_tenants=True) as session:
        [email] = await repository.claim_due(session, owner="old", limit=10, lease_s=0.0)
        await session.commit()
    # The old sender's lease expired; a new one takes the email over.
    async with db.session(all_tenants=True) as session:
        [taken] = await repository.claim_due(session, owner="new", limit=10, lease_s=60)
        await session.commit()
    assert taken.id == email.id

    async with db.session(all_tenants=True) as session:
        assert not await repository.mark_sent(session, email.id, "<x@y>", owner="old")
        await repository.mark_retry(session, email.id, "451 later", 0, owner="old")
        await repository.mark_failed(session, email.id, "550 no", owner="old")
        await repository.release(session, [email.id], "server down", owner="old")
        assert await repository.renew_leases(session, [email.id], owner="old", lease_s=60) == set()
        await session.commit()
    async with db.session(all_tenants=True) as session:
        row = (
            await session.execute(select(OutboxEmail).where(OutboxEmail.id == email.id))
        ).scalar_one()
    assert (row.status, row.lease_owner, row.attempts, row.last_error) == (
        "sending",
        "new",
        2,
        None,
    )
    async with db.session(all_tenants=True) as session:
        assert await repository.mark_sent(session, email.id, "<x@y>", owner="new")
        await session.commit()


async def test_a_killed_senders_emails_move_on_within_about_a_minute(
    db: Database, smtp_app_settings: Settings
) -> None:
    """The lease covers the message in flight, not the whole burst (was ~35 minutes)."""
    [timeout] = [f.default for f in msgspec.structs.fields(Settings) if f.name == "smtp_timeout_s"]
    assert lease_for(timeout) <= 60
    big_bursts = msgspec.structs.replace(smtp_app_settings, notify_batch_size=500)
    sender = await _sender(db, big_bursts)
    assert sender.lease_s == lease_for(smtp_app_settings.smtp_timeout_s)


def test_message_ids_are_stable_per_outbox_row(smtp_app_settings: Settings) -> None:
    from app.modules.notifications.smtp import SmtpTarget, message_id_for

    target = SmtpTarget(
        host="h",
        port=25,
        security="none",
        username=None,
        password=None,
        timeout_s=1,
        from_header="a@b.c",
        envelope_from="a@b.c",
        local_hostname="pulse.test",
        tls_context=None,
    )
    email_id = uuid.uuid4()
    assert message_id_for(email_id, target) == message_id_for(email_id, target)
    assert message_id_for(email_id, target) == f"<{email_id}@pulse.test>"
