"""What a newcomer sees first, in a real headless Chromium: honest counts and words on the
Imports page, times labelled with their timezone, comparisons against an empty period in
words, figures that fit their cards on a laptop, and the development mailbox page."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.fixtures.browser import PageFor, PulseWeb
from tests.fixtures.events import EventLoader, TenantMaker, make_event
from tests.web.test_dashboard import TIMEOUT_MS, api_get, sign_in, wait_loaded

LAPTOP = {"width": 1366, "height": 768}


async def _run_to_end(pulse: PulseWeb, source_id: str) -> dict[str, Any]:
    started = await pulse.api.post(
        f"/api/v1/tenants/acme/sources/{source_id}/runs", json={}, headers=pulse.headers()
    )
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    async with asyncio.timeout(60):
        while True:
            run = await api_get(pulse, f"/runs/{run_id}")
            if run["status"] in ("succeeded", "failed", "cancelled"):
                assert run["status"] == "succeeded", run
                return run
            await asyncio.sleep(0.1)


async def test_imports_page_counts_duplicates_and_rejects_once_in_plain_words(
    pulse_web: PulseWeb, make_tenant: TenantMaker, page_for: PageFor
) -> None:
    await make_tenant("acme")
    created = await pulse_web.api.post(
        "/api/v1/tenants/acme/sources",
        json={
            "kind": "synthetic",
            "name": "Demo traffic",
            "config": {"sessions_per_day": 30, "days_back": 2, "bad_row_every": 50},
        },
        headers=pulse_web.headers(),
    )
    assert created.status_code == 201, created.text
    source_id = created.json()["id"]
    first = await _run_to_end(pulse_web, source_id)
    again = await _run_to_end(pulse_web, source_id)  # the same window: all duplicates
    p = again["progress"]
    assert p["rows_loaded"] == 0, p
    assert p["rows_duplicate"] > 0, p
    assert 0 < p["rows_rejected"] == p["rows_quarantined"], p

    page, problems = await page_for(**LAPTOP)
    await sign_in(page, problems, pulse_web, "/imports")
    row = page.locator(f"#run-{again['id']}")
    await row.wait_for(timeout=TIMEOUT_MS)
    text = await row.locator(".progress").inner_text()
    read = p["rows_read"]
    assert text == (
        f"{read:,} rows read, 0 new, {p['rows_duplicate']:,} duplicates,"
        f" {p['rows_rejected']:,} rejected"
    ), text
    first_text = await page.locator(f"#run-{first['id']} .progress").inner_text()
    assert f"{first['progress']['rows_loaded']:,} new" in first_text
    assert "duplicate" not in first_text
    # Plurals by count, in the page's own formatter.
    words = await page.evaluate(
        "import('/static/format.js').then(m => [m.count(1, 'row'), m.count(2, 'row'),"
        " m.count(1, 'duplicate'), m.count(27172, 'duplicate')])"
    )
    assert words == ["1 row", "2 rows", "1 duplicate", "27,172 duplicates"]
    # Times on this page are the browser's: the labels say which zone that is.
    zone = await page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
    assert zone in await page.locator("#imports-zone").inner_text()
    headers = await page.locator("#runs th").all_text_contents()
    assert f"Started ({zone})" in headers
    headers = await page.locator("#sources th").all_text_contents()
    assert f"Last run ({zone})" in headers
    problems.check()


async def test_overview_labels_its_timezone_and_says_new_against_an_empty_period(
    pulse_web: PulseWeb, make_tenant: TenantMaker, load: EventLoader, page_for: PageFor
) -> None:
    await make_tenant("acme", timezone="America/Sao_Paulo")
    # Traffic only in the last few days: the previous 30 days hold nothing.
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    events = [
        make_event(now - timedelta(days=2, hours=i), user_id=f"u{i}", session_id=f"s{i}")
        for i in range(5)
    ]
    # A big revenue: its figure must still fit its card on a 1366 px laptop screen.
    events.append(
        make_event(
            now - timedelta(days=1),
            "purchase",
            user_id="u1",
            session_id="s1",
            revenue=Decimal("98765432.10"),
            currency="USD",
        )
    )
    await load("acme", events)
    page, problems = await page_for(**LAPTOP)
    await sign_in(page, problems, pulse_web, "/?range=30d&compare=1")
    await wait_loaded(page)
    freshness = await page.locator("#freshness").inner_text()
    assert freshness.startswith("Data up to")
    assert freshness.endswith("(America/Sao_Paulo)")
    changes = await page.locator("#cards .card .change").all_inner_texts()
    assert changes, "no comparison shown"
    for text in changes:
        assert "%" not in text, changes
        assert text.startswith("n/a"), changes
    # Every figure fits inside its card.
    spills = await page.eval_on_selector_all(
        "#cards .card",
        "cards => cards.filter(c => c.scrollWidth > c.clientWidth"
        " || c.querySelector('.value').scrollWidth > c.querySelector('.value').clientWidth)"
        ".map(c => c.dataset.metric)",
    )
    assert spills == []
    revenue = await page.locator("#cards .card[data-metric=revenue] .value").inner_text()
    assert revenue.replace("\n", "") == "98,765,432.10"
    problems.check()


async def test_comparison_says_new_for_a_metric_that_was_zero_before(
    pulse_web: PulseWeb, make_tenant: TenantMaker, load: EventLoader, page_for: PageFor
) -> None:
    await make_tenant("acme")
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    events = [
        make_event(now - timedelta(days=d), user_id=f"u{d}", session_id=f"s{d}")
        for d in (2, 3, 40, 45)
    ]
    events.append(
        make_event(
            now - timedelta(days=2),
            "purchase",
            user_id="u2",
            session_id="s2",
            revenue=Decimal("10"),
            currency="USD",
        )
    )
    await load("acme", events)
    page, problems = await page_for(**LAPTOP)
    await sign_in(page, problems, pulse_web, "/?range=30d&compare=1")
    await wait_loaded(page)
    revenue = await page.locator("#cards .card[data-metric=revenue] .change").inner_text()
    assert revenue == "new vs previous period"
    users = await page.locator("#cards .card[data-metric=users] .change").inner_text()
    assert users.endswith("% vs previous period"), users
    problems.check()


async def test_dev_mail_page_lists_caught_emails_escaped(
    pulse_web: PulseWeb, page_for: PageFor
) -> None:
    operator = {"Authorization": f"Bearer {pulse_web.token(role='operator')}"}
    tenant = {"id": "acme", "name": "Acme <b>Inc</b>", "timezone": "UTC"}
    created = await pulse_web.api.post("/api/v1/tenants", json=tenant, headers=operator)
    assert created.status_code == 201, created.text
    headers = pulse_web.headers()
    put = await pulse_web.api.put(
        "/api/v1/tenants/acme/notifications",
        json={"recipients": ["ops@acme.test"]},
        headers=headers,
    )
    assert put.status_code == 200, put.text
    queued = await pulse_web.api.post("/api/v1/tenants/acme/notifications/test", headers=headers)
    assert queued.status_code == 202, queued.text
    async with asyncio.timeout(20):
        while not (await pulse_web.api.get("/api/v1/dev/mail")).json():
            await asyncio.sleep(0.05)
    page, problems = await page_for(**LAPTOP)
    response = await page.goto(pulse_web.base_url + "/dev/mail")
    assert response is not None
    assert response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert await page.locator("h1").inner_text() == "Caught emails (1)"
    mail = page.locator("article.mail")
    assert await mail.locator("h2").inner_text() == "[Pulse] Test email"
    assert "ops@acme.test" in await mail.inner_text()
    assert "Acme <b>Inc</b>" in await mail.locator("pre").inner_text()
    assert await page.locator("article.mail b").count() == 0
    problems.check()
