"""The batch loader's transaction settings."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from app.core.db import Database
from app.core.workers import WorkerPool
from app.modules.ingestion.connectors.base import Batch, Progress
from app.modules.ingestion.loader import BatchLoader
from app.modules.tenants import TenantCreate, create_tenant
from tests.fixtures.ingestion import fast_settings

_LIMITS = text(
    "SELECT current_setting('idle_in_transaction_session_timeout') AS idle,"
    " current_setting('statement_timeout') AS statement"
)


async def test_an_import_transaction_may_wait_for_a_database_slot_past_the_idle_limit(
    database_url: str, clean_tables: None
) -> None:
    """#15: between statements an import's transaction may wait for a database slot
    (PULSE_INGEST_DB_SLOTS) behind a step of every other running import, each up to the
    load's statement timeout (600 s). The connection's idle-in-transaction limit (600 s)
    is raised for that transaction to cover it, and only for it."""
    db = Database.from_settings(fast_settings(database_url), database_url)
    try:
        async with db.session(all_tenants=True) as session:
            await create_tenant(session, TenantCreate(id="acme", name="Acme"))
            await session.commit()
        loader = BatchLoader(
            db,
            run_id=uuid.uuid4(),
            tenant_id="acme",
            source_id=uuid.uuid4(),
            owner="test",
            lease_s=60,
            batch_rows=100,
            quarantine_cap=10,
            already_quarantined=0,
            progress=Progress(),
            workers=WorkerPool(1),  # never started: an empty batch sends no rows
            lock_wait_s=1,
            concurrency=8,
        )
        await loader.add(Batch(rows=[], commit=False))
        pending = loader._pending
        assert pending is not None
        inside = (await pending.session.execute(_LIMITS)).one()
        await loader.discard()
        async with db.session("acme") as session:
            outside = (await session.execute(_LIMITS)).one()
    finally:
        await db.dispose()
    assert (inside.idle, inside.statement) == ("80min", "10min")  # 8 imports x 600 s
    assert outside.idle == "10min"
