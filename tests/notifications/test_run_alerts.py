from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select

from app.core.db import Database
from app.modules.notifications import EmailLinks, notify_run_outcome
from app.modules.notifications.models import OutboxEmail
from tests.notifications.conftest import MakeTenant

FINISHED = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


async def _outcome(
    db: Database,
    source_id: uuid.UUID,
    status: str,
    *,
    run_id: uuid.UUID | None = None,
    previous_failures: int = 0,
) -> uuid.UUID:
    run_id = run_id or uuid.uuid4()
    async with db.session(all_tenants=True) as session:
        await notify_run_outcome(
            session,
            tenant_id="acme",
            run_id=run_id,
            source_id=source_id,
            source_name="GA4 <main>",
            status=status,  # type: ignore[arg-type]
            attempts=3,
            error="permission denied on dataset analytics_1" if status == "failed" else None,
            finished_at=FINISHED,
            links=EmailLinks("https://pulse.example"),
            previous_failures=previous_failures,
        )
        await session.commit()
    return run_id


async def _outbox(db: Database) -> list[OutboxEmail]:
    async with db.session(all_tenants=True) as session:
        result = await session.execute(select(OutboxEmail).order_by(OutboxEmail.created_at))
        return list(result.scalars().all())


async def test_failed_run_queues_one_email_per_recipient_once(
    db: Database, tenant_with_recipients: MakeTenant
) -> None:
    await tenant_with_recipients(recipients=["ops@acme.test", "Lead@Acme.test"])
    source = uuid.uuid4()
    run_id = await _outcome(db, source, "failed")
    await _outcome(db, source, "failed", run_id=run_id)  # the same event again

    emails = await _outbox(db)
    assert sorted(e.recipient for e in emails) == ["lead@acme.test", "ops@acme.test"]
    email = emails[0]
    assert email.kind == "import_failed"
    assert email.status == "pending"
    assert email.subject == "[Pulse] Import failed: GA4 <main>"
    assert "permission denied on dataset analytics_1" in email.body_text
    assert "Attempts:  3" in email.body_text
    assert f"https://pulse.example/api/v1/tenants/acme/runs/{run_id}" in email.body_text
    assert "2026-11-27 10:30 CET" in email.body_text  # Europe/Berlin
    assert "GA4 &lt;main&gt;" in email.body_html
    assert "<main>" not in email.body_html


async def test_no_recipients_queues_nothing(
    db: Database, tenant_with_recipients: MakeTenant
) -> None:
    await tenant_with_recipients()
    async with db.session(all_tenants=True) as session:
        from app.modules.notifications import repository

        await repository.upsert_preferences(session, "acme", {"recipients": []})
        await session.commit()
    await _outcome(db, uuid.uuid4(), "failed")
    assert await _outbox(db) == []


async def test_success_after_failures_is_a_recovery_and_plain_success_is_silent(
    db: Database, tenant_with_recipients: MakeTenant
) -> None:
    await tenant_with_recipients()
    source = uuid.uuid4()
    await _outcome(db, source, "succeeded")
    assert await _outbox(db) == []

    # The streak is ingestion's: it hands over how many runs failed before this one.
    await _outcome(db, source, "failed")
    await _outcome(db, source, "failed", previous_failures=1)
    await _outcome(db, source, "succeeded", previous_failures=2)
    await _outcome(db, source, "succeeded")

    kinds = [e.kind for e in await _outbox(db)]
    assert kinds.count("import_failed") == 2
    assert kinds.count("source_recovered") == 1
    recovered = next(e for e in await _outbox(db) if e.kind == "source_recovered")
    assert "after 2 failed runs" in recovered.body_text


async def test_success_alert_only_when_enabled(
    db: Database, tenant_with_recipients: MakeTenant
) -> None:
    await tenant_with_recipients(import_succeeded=True, import_failed=False)
    source = uuid.uuid4()
    await _outcome(db, source, "succeeded")
    await _outcome(db, source, "failed")
    assert [e.kind for e in await _outbox(db)] == ["import_succeeded"]


async def test_old_sent_and_failed_emails_are_purged_but_pending_ones_kept(
    db: Database, tenant_with_recipients: MakeTenant
) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from app.modules.notifications.digest import OUTBOX_RETENTION, purge_old_emails

    await tenant_with_recipients(recipients=["a@acme.test", "b@acme.test", "c@acme.test"])
    await _outcome(db, uuid.uuid4(), "failed")
    rows = await _outbox(db)
    statuses = dict(zip((r.id for r in rows), ("sent", "failed", "pending"), strict=True))
    async with db.session(all_tenants=True) as session:
        for email_id, status in statuses.items():
            await session.execute(
                update(OutboxEmail)
                .where(OutboxEmail.id == email_id)
                .values(status=status, created_at=FINISHED - OUTBOX_RETENTION - timedelta(days=1))
            )
        await session.commit()
    assert await purge_old_emails(db, now=FINISHED) == 2
    assert [r.status for r in await _outbox(db)] == ["pending"]
    assert await purge_old_emails(db, now=FINISHED) == 0
