"""End to end with the ingestion engine: a run that fails after its last attempt produces
exactly one email, and the next successful run a recovery email."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.db import Database
from app.modules.ingestion import service as ingestion_service
from app.modules.ingestion.schemas import SourceUpdate
from app.modules.notifications import repository
from app.modules.notifications.sender import OutboxSender
from app.modules.notifications.smtp import target_from_settings
from tests.conftest import make_settings
from tests.fixtures.ingestion import IngestKit
from tests.fixtures.smtp import SmtpTestServer, smtp_settings


@pytest.fixture
async def sender(
    ingest: IngestKit, database_url: str, smtp_server: SmtpTestServer
) -> AsyncIterator[OutboxSender]:
    settings = make_settings(database_url, **smtp_settings(smtp_server))
    sender = OutboxSender(
        ingest.db,
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


async def _recipients(db: Database, tenant_id: str, addresses: list[str]) -> None:
    async with db.session(all_tenants=True) as session:
        await repository.upsert_preferences(session, tenant_id, {"recipients": addresses})
        await session.commit()


async def test_failed_run_emails_once_and_the_next_success_emails_a_recovery(
    ingest: IngestKit,
    fake_connectors: Any,
    smtp_server: SmtpTestServer,
    sender: OutboxSender,
) -> None:
    tenant = await ingest.tenant(timezone="Europe/Berlin")
    await _recipients(ingest.db, tenant, ["ops@acme.test"])
    source = await ingest.source(
        "test_flaky", name="Shop GA4", config={"fail_attempts": 99, "error": "transient"}
    )
    async with ingest.runner():
        failed = await ingest.wait_final((await ingest.queue_run(source.id, trigger="manual")).id)
        assert failed.status == "failed"
        [alert] = await smtp_server.wait_for(1)

        # Fix the source: the next run succeeds and the admins hear that it recovered.
        async with ingest.db.session(all_tenants=True) as session:
            await ingestion_service.update_source(
                session,
                ingest.box,
                tenant,
                source.id,
                SourceUpdate(config={"fail_attempts": 0, "rows": 3}),
            )
            await session.commit()
        ok = await ingest.wait_final((await ingest.queue_run(source.id, trigger="manual")).id)
        assert ok.status == "succeeded"
        mails = await smtp_server.wait_for(2)

    assert alert.subject == "[Pulse] Import failed: Shop GA4"
    text_body = alert.body("plain")
    assert f"Attempts:  {ingest.settings.ingest_max_attempts}" in text_body
    assert "503 from upstream" in text_body
    assert f"/api/v1/tenants/{tenant}/runs/{failed.id}" in text_body
    recovered = mails[1]
    assert recovered.subject == "[Pulse] Import recovered: Shop GA4"
    assert "succeeded again after 1 failed run." in recovered.body("plain")
    # Exactly these two: no email per retry, none twice.
    await sender.drain_once()
    assert [m.subject for m in smtp_server.received] == [
        "[Pulse] Import failed: Shop GA4",
        "[Pulse] Import recovered: Shop GA4",
    ]
