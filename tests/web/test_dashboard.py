"""The dashboard in a real headless Chromium: sign-in through the development issuer's
authorization endpoint (code + PKCE), figures equal to the API's, filters and ranges in
the URL, CSV downloads, imports with live progress, roles, sign-out and a clean console."""

from __future__ import annotations

import random
import socket
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fixtures.browser import PageFor, PageProblems, PulseWeb, save_artifact
from tests.fixtures.events import EventLoader, TenantMaker, random_events

TIMEOUT_MS = 20_000
CARD_METRICS = (
    "users",
    "sessions",
    "pageviews",
    "bounce_rate",
    "avg_session_duration",
    "conversions",
    "revenue",
)
PHONE = {"width": 390, "height": 844}


@pytest.fixture
async def acme(make_tenant: TenantMaker, load: EventLoader) -> str:
    """Tenant acme with known, seeded traffic over the last 55 days (so the last 30 days
    have a previous period to compare with)."""
    await make_tenant("acme")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=55)
    events = random_events(random.Random(7), start=start, days=55, sessions=500, users=150)
    await load("acme", events)
    return "acme"


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


async def sign_in(
    page: Any,
    problems: PageProblems,
    pulse: PulseWeb,
    path: str = "/",
    *,
    role: str = "admin",
    subject: str = "alice",
    tenants: str = "acme",
    ttl_s: int | None = None,
) -> None:
    """Open ``path``, get sent to the picker, sign in, and wait to be back on Pulse."""
    await page.goto(pulse.base_url + path)
    try:
        await page.wait_for_url("**/dev-issuer/authorize?**", timeout=TIMEOUT_MS)
    except Exception as exc:
        text = await page.inner_text("body")
        raise AssertionError(f"no sign-in page: {page.url} {text[:500]} {problems.items}") from exc
    await page.fill("#subject", subject)
    await page.fill("#tenants", tenants)
    await page.check(f"input[name=role][value={role}]")
    if ttl_s is not None:
        await page.fill("#ttl_s", str(ttl_s))
    await page.click("#sign-in")
    await page.wait_for_selector("#account:not([hidden])", timeout=TIMEOUT_MS)


async def wait_loaded(page: Any) -> None:
    """Every panel has finished loading (no aria-busy left) and the cards are drawn."""
    await page.wait_for_selector("#cards .card >> nth=6", timeout=TIMEOUT_MS)
    await page.wait_for_function(
        "() => !document.querySelector('[aria-busy=true]')", timeout=TIMEOUT_MS
    )


async def wait_for_query(page: Any, **expected: str | None) -> None:
    """The URL's query has these values (None: the parameter is absent)."""

    def matches(url: str) -> bool:
        query = query_of(url)
        return all(
            (query.get(k) is None) if v is None else (query.get(k) == [v])
            for k, v in expected.items()
        )

    await page.wait_for_url(matches, timeout=TIMEOUT_MS)


async def card_values(page: Any) -> dict[str, float | None]:
    raw: dict[str, str] = await page.eval_on_selector_all(
        "#cards .card",
        "cards => Object.fromEntries(cards.map(c => [c.dataset.metric,"
        " c.querySelector('.value').dataset.raw]))",
    )
    return {k: (float(v) if v else None) for k, v in raw.items()}


async def api_get(pulse: PulseWeb, path: str, **params: str) -> dict[str, Any]:
    response = await pulse.api.get(
        f"/api/v1/tenants/acme{path}", params=params, headers=pulse.headers()
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_cards_match(cards: dict[str, float | None], totals: dict[str, Any]) -> None:
    assert set(cards) == set(CARD_METRICS)
    for metric in CARD_METRICS:
        expected = totals[metric]
        if expected is None:
            assert cards[metric] is None, metric
        else:
            assert cards[metric] == pytest.approx(expected), metric


async def breakdown_rows(page: Any, dimension: str) -> list[tuple[str, float, float]]:
    rows: list[list[str]] = await page.eval_on_selector_all(
        f"#breakdown-{dimension} tbody tr",
        "rows => rows.map(r => [r.dataset.value,"
        " ...[...r.querySelectorAll('td.num')].map(td => td.dataset.raw)])",
    )
    return [(r[0], float(r[1]), float(r[2])) for r in rows]


async def test_overview_shows_the_api_figures_and_follows_range_filters_and_csv(
    pulse_web: PulseWeb, acme: str, page_for: PageFor
) -> None:
    page, problems = await page_for()
    await sign_in(page, problems, pulse_web, "/?range=30d")
    await wait_loaded(page)
    await wait_for_query(page, tenant="acme", range="30d", compare="1")

    # Figures: the summary cards and a breakdown are exactly what the API answers.
    summary = await api_get(
        pulse_web, "/stats/summary", date_range="30d", compare="previous_period"
    )
    assert summary["totals"]["users"] > 0
    assert_cards_match(await card_values(page), summary["totals"])
    countries = await api_get(
        pulse_web,
        "/stats/breakdown",
        dimension="country",
        metrics="users,pageviews",
        date_range="30d",
        compare="previous_period",
        limit="10",
    )
    assert await breakdown_rows(page, "country") == [
        (r["dimensions"]["country"], r["metrics"]["users"], r["metrics"]["pageviews"])
        for r in countries["rows"]
    ]
    # The token is only in memory: nothing in web storage, no script-readable cookie.
    assert await page.evaluate("() => [localStorage.length, sessionStorage.length]") == [0, 0]
    assert await page.evaluate("() => document.cookie") == ""
    freshness = await page.inner_text("#freshness")
    assert freshness.startswith("Data up to"), freshness
    await save_artifact("overview-desktop.png", await page.screenshot(full_page=True))

    # A preset: the URL and the figures follow.
    await page.select_option("#range", "7d")
    await wait_for_query(page, range="7d")
    await wait_loaded(page)
    week = await api_get(pulse_web, "/stats/summary", date_range="7d", compare="previous_period")
    assert week["totals"]["users"] != summary["totals"]["users"]
    assert_cards_match(await card_values(page), week["totals"])

    # A custom range.
    first = (date.today() - timedelta(days=20)).isoformat()
    last = (date.today() - timedelta(days=10)).isoformat()
    await page.select_option("#range", "custom")
    await page.fill("#range-from", first)
    await page.fill("#range-to", last)
    await page.click("#custom-range button[type=submit]")
    await wait_for_query(page, range=f"{first},{last}")
    await wait_loaded(page)
    custom = await api_get(
        pulse_web, "/stats/summary", date_range=f"{first},{last}", compare="previous_period"
    )
    assert_cards_match(await card_values(page), custom["totals"])

    # Clicking a row filters the whole page; the filter shows as a chip and is in the URL.
    await page.select_option("#range", "30d")
    await wait_for_query(page, range="30d")
    await wait_loaded(page)
    await page.click("#breakdown-country tr[data-value=DE] button.row-filter")
    await wait_for_query(page, f="country:DE")
    await wait_loaded(page)
    chip = await page.inner_text("#chips .chip")
    assert "Country is DE" in chip
    filtered = await api_get(
        pulse_web,
        "/stats/summary",
        date_range="30d",
        compare="previous_period",
        filters='[["is","country",["DE"]]]',
    )
    assert filtered["totals"]["users"] < summary["totals"]["users"]
    assert_cards_match(await card_values(page), filtered["totals"])
    assert [r[0] for r in await breakdown_rows(page, "country")] == ["DE"]

    # CSV of a table: the same rows the API exports for the same view.
    async with page.expect_download(timeout=TIMEOUT_MS) as download_info:
        await page.click("#title-page_path ~ button.csv")
    download = await download_info.value
    assert download.suggested_filename == "acme-page_path.csv"
    csv_path = await download.path()
    assert csv_path is not None
    downloaded = await pulse_web_read(csv_path)
    expected = await pulse_web.api.get(
        "/api/v1/tenants/acme/stats/breakdown",
        params={
            "dimension": "page_path",
            "metrics": "users,pageviews",
            "date_range": "30d",
            "compare": "previous_period",
            "filters": '[["is","country",["DE"]]]',
            "limit": "1000",
            "format": "csv",
        },
        headers=pulse_web.headers(),
    )
    assert downloaded.splitlines()[0].startswith("page_path,users,pageviews")
    assert downloaded == expected.text

    # Phone width: the same view, screenshot for the record.
    await page.set_viewport_size(PHONE)
    await wait_loaded(page)
    await save_artifact("overview-phone.png", await page.screenshot(full_page=True))
    await page.set_viewport_size({"width": 1280, "height": 900})

    # Removing the chip removes the filter; metric, bucket and comparison are in the URL.
    await page.click("#chips .chip-remove")
    await wait_for_query(page, f=None)
    await wait_loaded(page)
    assert_cards_match(await card_values(page), summary["totals"])
    await page.select_option("#metric", "pageviews")
    await wait_for_query(page, metric="pageviews")
    await page.click(".segmented button[data-interval=week]")
    await wait_for_query(page, interval="week")
    await wait_loaded(page)
    series = await api_get(
        pulse_web,
        "/stats/timeseries",
        metrics="pageviews",
        interval="week",
        date_range="30d",
        compare="previous_period",
    )
    dots = await page.eval_on_selector_all("#chart svg circle.dot", "c => c.length")
    assert dots == len(series["rows"])
    await page.uncheck("#compare")
    await wait_for_query(page, compare="0")
    await wait_loaded(page)
    assert await page.query_selector("#cards .change") is None

    # Reloading the URL restores the whole view (after a silent sign-in round trip).
    bookmarked = page.url
    await page.goto(bookmarked)
    await wait_loaded(page)
    assert query_of(page.url) == query_of(bookmarked)
    assert await page.input_value("#metric") == "pageviews"
    problems.check()


async def pulse_web_read(path: Any) -> str:
    import asyncio

    return await asyncio.to_thread(lambda: open(path, encoding="utf-8", newline="").read())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_admin_runs_an_import_and_watches_it_finish(
    pulse_web: PulseWeb, make_tenant: TenantMaker, page_for: PageFor
) -> None:
    await make_tenant("acme")
    created = await pulse_web.api.post(
        "/api/v1/tenants/acme/sources",
        json={
            "kind": "synthetic",
            "name": "Demo traffic",
            "config": {"sessions_per_day": 40, "days_back": 3, "batch_rows": 100},
            "schedule": {"cron": "0 3 * * *"},
        },
        headers=pulse_web.headers(),
    )
    assert created.status_code == 201, created.text
    source_id = created.json()["id"]
    page, problems = await page_for()
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/progress") else None)
    await sign_in(page, problems, pulse_web, "/")
    await wait_loaded(page)
    # In-app navigation keeps the in-memory token: no new sign-in.
    await page.click("#nav-imports")
    await page.wait_for_url("**/imports?**", timeout=TIMEOUT_MS)
    row = page.locator(f"#sources tr[data-source-id='{source_id}']")
    await row.wait_for(timeout=TIMEOUT_MS)
    assert "Cron 0 3 * * *" in await row.inner_text()
    assert "Never" in await row.inner_text()

    await row.locator("button.run-now").click()
    finished = page.locator("#runs tr[data-status=succeeded]")
    await finished.wait_for(timeout=TIMEOUT_MS)
    runs = await api_get(pulse_web, "/runs")
    run = runs["items"][0]
    assert run["status"] == "succeeded"
    assert run["progress"]["rows_loaded"] > 0
    text = await page.locator(f"#run-{run['id']}").inner_text()
    assert f"{run['progress']['rows_loaded']:,} new" in text
    # The sources table is refreshed with the run's outcome.
    await page.locator(f"#sources tr[data-source-id='{source_id}'] .status-succeeded").wait_for(
        timeout=TIMEOUT_MS
    )
    # Progress came over the engine's server-sent event stream.
    assert streams == [f"{pulse_web.base_url}/api/v1/tenants/acme/runs/{run['id']}/progress"]
    await save_artifact("imports-desktop.png", await page.screenshot(full_page=True))
    await page.set_viewport_size(PHONE)
    await save_artifact("imports-phone.png", await page.screenshot(full_page=True))
    problems.check()


async def test_failed_run_shows_its_error_in_plain_words(
    pulse_web: PulseWeb, make_tenant: TenantMaker, page_for: PageFor
) -> None:
    await make_tenant("acme")
    created = await pulse_web.api.post(
        "/api/v1/tenants/acme/sources",
        json={
            "kind": "sftp",
            "name": "Nightly files",
            "config": {
                "host": "127.0.0.1",
                "port": _closed_port(),
                "username": "pulse",
                "host_key": "SHA256:" + "A" * 43,
            },
            "secrets": {"password": "x"},
        },
        headers=pulse_web.headers(),
    )
    assert created.status_code == 201, created.text
    page, problems = await page_for()
    await sign_in(page, problems, pulse_web, "/imports")
    await page.locator("#sources button.run-now").click()
    failed = page.locator("#runs tr[data-status=failed]")
    await failed.wait_for(timeout=TIMEOUT_MS)
    problem = await failed.locator(".run-error").inner_text()
    assert problem.strip(), "a failed run explains itself"
    runs = await api_get(pulse_web, "/runs")
    assert runs["items"][0]["error"]["message"] in problem
    # Plain words come first; the technical message follows as details.
    assert not problem.startswith(runs["items"][0]["error"]["error_class"] or "\0")
    problems.check()


async def test_viewer_sees_the_figures_but_no_admin_controls(
    pulse_web: PulseWeb, acme: str, make_tenant: TenantMaker, page_for: PageFor
) -> None:
    await make_tenant("beta")
    page, problems = await page_for()
    await sign_in(
        page, problems, pulse_web, "/", role="viewer", subject="victor", tenants="acme, beta"
    )
    await wait_loaded(page)
    assert await page.is_hidden("#nav-imports")
    assert "victor (viewer)" in await page.inner_text("#who")

    # Keyboard: a breakdown row is a button; Enter filters by it.
    await page.focus("#breakdown-country tr[data-value=FR] button.row-filter")
    await page.keyboard.press("Enter")
    await wait_for_query(page, f="country:FR")
    await wait_loaded(page)

    # Several tenants: a switcher; the other tenant has no data yet (empty states).
    await page.select_option("#tenant", "beta")
    await wait_for_query(page, tenant="beta", f=None)
    await wait_loaded(page)
    assert (await card_values(page))["pageviews"] == 0
    assert await page.locator("#breakdown-country .empty").inner_text() == (
        "No data for this period."
    )
    await page.select_option("#tenant", "acme")
    await wait_for_query(page, tenant="acme")
    await wait_loaded(page)
    await page.goto(pulse_web.base_url + "/imports?tenant=acme")
    await page.wait_for_selector("main .notice", timeout=TIMEOUT_MS)
    assert "managed by the tenant's admins" in await page.inner_text("main")
    assert await page.locator("button.run-now").count() == 0
    assert await page.locator("#sources").count() == 0
    problems.check()


async def test_sign_out_ends_the_session(pulse_web: PulseWeb, acme: str, page_for: PageFor) -> None:
    page, problems = await page_for()
    await sign_in(page, problems, pulse_web, "/")
    await wait_loaded(page)
    await page.click("#sign-out")
    await page.wait_for_url("**/signed-out", timeout=TIMEOUT_MS)
    await page.wait_for_selector("#sign-in-again", timeout=TIMEOUT_MS)
    assert "Signed out" in await page.inner_text("main")
    # The issuer's session is gone too: opening Pulse asks who you are again.
    await page.goto(pulse_web.base_url + "/")
    await page.wait_for_url("**/dev-issuer/authorize?**", timeout=TIMEOUT_MS)
    assert await page.is_visible("#subject")
    problems.check()


async def test_expired_token_goes_through_sign_in_and_keeps_the_view(
    pulse_web: PulseWeb, acme: str, page_for: PageFor
) -> None:
    page, problems = await page_for()
    lifetime_s = 5
    await sign_in(page, problems, pulse_web, "/?range=7d&metric=sessions", ttl_s=lifetime_s)
    signed_in_at = time.time()
    await wait_loaded(page)
    await page.click("#breakdown-country tr[data-value=US] button.row-filter")
    await wait_for_query(page, f="country:US")
    await wait_loaded(page)
    # Wait (on the browser's clock) until the token has expired, then act.
    await page.wait_for_function(
        f"() => Date.now() > {int((signed_in_at + lifetime_s + 0.5) * 1000)}",
        timeout=TIMEOUT_MS,
    )
    await page.uncheck("#compare")
    # Through the issuer (which remembers the user) and back to the same view.
    await wait_for_query(page, compare="0", f="country:US", range="7d", metric="sessions")
    await wait_loaded(page)
    assert "country:US" in query_of(page.url)["f"]
    filtered = await api_get(
        pulse_web, "/stats/summary", date_range="7d", filters='[["is","country",["US"]]]'
    )
    assert_cards_match(await card_values(page), filtered["totals"])
    problems.check()


async def test_pages_send_a_strict_content_security_policy(
    pulse_web: PulseWeb, make_tenant: TenantMaker
) -> None:
    for path in ("/", "/imports", "/auth/callback", "/signed-out"):
        response = await pulse_web.api.get(path)
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "unsafe-eval" not in csp
        assert "<script" in response.text
        assert 'src="/static/main.js' in response.text
    config = (await pulse_web.api.get("/web/config")).json()
    assert config["authorization_endpoint"].endswith("/dev-issuer/authorize")
    assert config["client_id"] == "pulse-dashboard"
    discovery = (await pulse_web.api.get("/dev-issuer/.well-known/openid-configuration")).json()
    assert discovery["authorization_endpoint"] == pulse_web.base_url + "/dev-issuer/authorize"
    assert discovery["token_endpoint"] == pulse_web.base_url + "/dev-issuer/token"
    assert discovery["code_challenge_methods_supported"] == ["S256"]
    static = await pulse_web.api.get("/static/main.js")
    assert static.headers["content-type"].startswith("text/javascript")
    again = await pulse_web.api.get(
        "/static/main.js", headers={"If-None-Match": static.headers["etag"]}
    )
    assert again.status_code == 304
    assert (await pulse_web.api.get("/static/../routes.py")).status_code == 404


async def test_api_errors_show_as_messages_with_retry(
    pulse_web: PulseWeb, acme: str, page_for: PageFor
) -> None:
    page, problems = await page_for()
    # A well-formed but impossible date: the API answers 400 for every panel.
    await sign_in(page, problems, pulse_web, "/?range=2026-02-30,2026-02-31")
    await page.wait_for_selector("#cards .error", timeout=TIMEOUT_MS)
    await page.wait_for_function(
        "() => !document.querySelector('[aria-busy=true]')", timeout=TIMEOUT_MS
    )
    for panel in ("#cards", "#chart", "#breakdown-country"):
        message = await page.inner_text(f"{panel} .error")
        assert message.startswith("Could not load:"), message
        assert await page.locator(f"{panel} .error button").inner_text() == "Retry"
    # The browser logs each refused request; nothing else may appear.
    unexpected = [p for p in problems.items if "status of 400" not in p]
    assert unexpected == []
    assert problems.items, "the 400 answers were seen"
    # Choosing a valid range recovers.
    problems.items.clear()
    await page.select_option("#range", "30d")
    await wait_for_query(page, range="30d")
    await wait_loaded(page)
    assert await page.locator(".error").count() == 0
    problems.check()
