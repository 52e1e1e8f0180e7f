"""The weekly digest: due at the tenant's day and hour in its timezone, figures from the
dashboard's query engine over known events, queued once per tenant and week."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from app.core.db import Database
from app.core.settings import Settings
from app.modules.events import CanonicalEvent, load_events
from app.modules.notifications.digest import latest_slot, run_digest_tick
from app.modules.notifications.models import DigestSlot, OutboxEmail
from app.modules.notifications.sender import OutboxSender
from app.modules.notifications.smtp import target_from_settings
from tests.conftest import make_settings
from tests.fixtures.smtp import SmtpTestServer, smtp_settings
from tests.notifications.conftest import MakeTenant

BERLIN = ZoneInfo("Europe/Berlin")
# Monday 23 Nov 2026, 08:00:30 in Berlin: the digest (Mondays at 08:00) has just become due.
NOW = datetime(2026, 11, 23, 8, 0, 30, tzinfo=BERLIN).astimezone(UTC)
_ids = count()


def _event(local: str, name: str = "page_view", **fields: Any) -> CanonicalEvent:
    occurred = datetime.fromisoformat(local).replace(tzinfo=BERLIN).astimezone(UTC)
    if fields.get("revenue") is not None:
        fields["revenue"] = Decimal(fields["revenue"])
    return CanonicalEvent(
        event_id=f"e{next(_ids)}", event_name=name, occurred_at=occurred, **fields
    )


KNOWN_EVENTS = [
    # This week: Mon 16 - Sun 22 Nov (Berlin).
    *[
        _event("2026-11-16T10:00", user_id="u1", session_id="s1", page_path="/", source="google")
        for _ in range(3)
    ],
    *[
        _event(
            "2026-11-18T12:00",
            user_id="u2",
            session_id="s2",
            page_path="/pricing",
            source="newsletter",
        )
        for _ in range(2)
    ],
    _event(
        "2026-11-18T12:05",
        "purchase",
        user_id="u2",
        session_id="s2",
        page_path="/checkout",
        source="newsletter",
        revenue="100.50",
        currency="EUR",
    ),
    # Late on Sunday in Berlin (still this week), already Sunday 22:30 in UTC.
    _event(
        "2026-11-22T23:30", user_id="u1", session_id="s3", page_path="/pricing", source="google"
    ),
    # Just after midnight on Monday in Berlin, still Sunday 23:30 UTC: this week.
    _event("2026-11-16T00:30", user_id="u4", session_id="s5", page_path="/"),
    # Monday 00:30 in Berlin = Sunday 23:30 UTC: next week, must not count.
    _event("2026-11-23T00:30", user_id="u5", session_id="s6", page_path="/late", source="google"),
    # The week before: Mon 9 - Sun 15 Nov.
    *[
        _event("2026-11-10T09:00", user_id="u3", session_id="s4", page_path="/", source="google")
        for _ in range(2)
    ],
    _event(
        "2026-11-10T09:10",
        "purchase",
        user_id="u3",
        session_id="s4",
        page_path="/checkout",
        source="google",
        revenue="20.00",
        currency="EUR",
    ),
]


@pytest.fixture
async def tenant_with_data(db: Database, tenant_with_recipients: MakeTenant) -> str:
    await tenant_with_recipients(
        name="Acme <Shop>",
        recipients=["ceo@acme.test", "ops@acme.test"],
        digest_weekday=1,
        digest_hour=8,
    )
    async with db.session(all_tenants=True) as session:
        await load_events(session, "acme", KNOWN_EVENTS, source_id=None)
        await session.commit()
    return "acme"


async def _digests(db: Database) -> list[OutboxEmail]:
    async with db.session(all_tenants=True) as session:
        result = await session.execute(
            select(OutboxEmail).where(OutboxEmail.kind == "weekly_digest")
        )
        return list(result.scalars().all())


def test_latest_slot_is_the_tenants_day_and_hour_in_its_timezone() -> None:
    slot = latest_slot(NOW, BERLIN, weekday=1, hour=8)
    assert slot.due_at == datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    assert slot.week_start == date(2026, 11, 23)
    assert (slot.first_day, slot.last_day) == (date(2026, 11, 16), date(2026, 11, 22))
    # One minute before 08:00 local, the latest slot is last week's.
    before = latest_slot(NOW - timedelta(minutes=2), BERLIN, weekday=1, hour=8)
    assert before.due_at == datetime(2026, 11, 16, 7, 0, tzinfo=UTC)
    # Friday 17:00 in Los Angeles, looked at on Saturday morning in UTC.
    la = latest_slot(
        datetime(2026, 11, 28, 9, 0, tzinfo=UTC), ZoneInfo("America/Los_Angeles"), 5, 17
    )
    assert la.due_at == datetime(2026, 11, 28, 1, 0, tzinfo=UTC)
    assert la.week_start == date(2026, 11, 23)
    # Across the spring DST change (Sunday 29 Mar 2026 in Berlin) the local hour holds.
    dst = latest_slot(datetime(2026, 3, 29, 12, 0, tzinfo=UTC), BERLIN, weekday=7, hour=9)
    assert dst.due_at == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)  # 09:00 CEST


async def test_digest_from_known_data_has_the_right_figures_and_is_delivered(
    db: Database,
    database_url: str,
    tenant_with_data: str,
    smtp_server: SmtpTestServer,
) -> None:
    assert await run_digest_tick(db, now=NOW) == 1
    rows = await _digests(db)
    assert sorted(r.recipient for r in rows) == ["ceo@acme.test", "ops@acme.test"]

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
    assert await sender.drain_once() == 2
    mails = await smtp_server.wait_for(2)
    mail = next(m for m in mails if m.recipients == ["ceo@acme.test"])
    assert mail.subject == "[Pulse] Weekly digest: Acme <Shop>, 16 Nov to 22 Nov 2026"

    text = mail.body("plain")
    table = text.split("Change\n")[1].split("\n\n")[0].splitlines()
    lines = {line.split()[0]: line.split()[1:] for line in table}
    assert lines["Users"] == ["3", "1", "+200.0%"]
    assert lines["Sessions"] == ["4", "1", "+300.0%"]
    assert lines["Pageviews"] == ["7", "2", "+250.0%"]
    assert lines["Conversions"] == ["1", "1", "+0.0%"]
    assert lines["Revenue"] == ["100.50", "20.00", "+402.5%"]
    assert "Mon 16 Nov 2026 to Sun 22 Nov 2026" in text
    pages = text.split("Top pages (pageviews):\n")[1].split("\n\n")[0].splitlines()
    assert [p.split() for p in pages] == [["4", "/"], ["3", "/pricing"]]
    sources = text.split("Top sources (sessions):\n")[1].split("\n\n")[0].splitlines()
    assert [s.split() for s in sources] == [
        ["2", "google"],
        ["1", "(not", "set)"],
        ["1", "newsletter"],
    ]
    assert "/late" not in text
    assert "Users and Sessions are estimates" in text

    html = mail.body("html")
    assert "Acme &lt;Shop&gt;" in html
    assert "<Shop>" not in html
    assert '<td align="right" style="padding: 4px 10px;">+402.5%</td>' in html


async def test_digest_is_queued_once_per_week_even_with_concurrent_schedulers(
    db: Database, settings: Settings, database_url: str, tenant_with_data: str
) -> None:
    other = Database.from_settings(settings, database_url)
    try:
        results = await asyncio.gather(
            *(run_digest_tick(d, now=NOW) for d in (db, other, db, other))
        )
    finally:
        await other.dispose()
    assert sum(results) == 1
    # Later ticks in the same week, and another tick an hour later, add nothing.
    assert await run_digest_tick(db, now=NOW + timedelta(hours=1)) == 0
    assert await run_digest_tick(db, now=NOW + timedelta(days=3)) == 0
    assert len(await _digests(db)) == 2
    async with db.session(all_tenants=True) as session:
        slots = (await session.execute(select(DigestSlot))).scalars().all()
    assert [(s.tenant_id, s.week_start) for s in slots] == [("acme", date(2026, 11, 23))]
    # The next week's slot is a new digest.
    assert await run_digest_tick(db, now=NOW + timedelta(days=7)) == 1


async def test_no_digest_before_the_hour_when_disabled_or_long_overdue(
    db: Database, tenant_with_recipients: MakeTenant
) -> None:
    await tenant_with_recipients(digest_weekday=1, digest_hour=8)
    assert await run_digest_tick(db, now=NOW - timedelta(minutes=2)) == 0
    # The app was down for more than a day after the slot: skipped, not sent late.
    assert await run_digest_tick(db, now=NOW + timedelta(hours=25)) == 0
    await tenant_with_recipients(weekly_digest=False)
    assert await run_digest_tick(db, now=NOW) == 0
    await tenant_with_recipients(weekly_digest=True, recipients=[])
    async with db.session(all_tenants=True) as session:
        from app.modules.notifications import repository

        await repository.upsert_preferences(session, "acme", {"recipients": []})
        await session.commit()
    assert await run_digest_tick(db, now=NOW) == 0
    assert await _digests(db) == []
