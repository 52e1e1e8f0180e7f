"""The ``bigquery_ga4`` connector through the real google-cloud-bigquery client.

Data tests run against the bqemulator (GA4-shaped tables, nested records, REPEATED
event_params); faults the emulator cannot produce use the loopback REST fake.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.core.workers import WorkerPool
from app.modules.events import event_id_for, to_canonical
from app.modules.ingestion.connectors.base import DateWindow, TerminalError, TransientError
from app.modules.ingestion.connectors.bigquery import BigQueryConnector
from app.modules.ingestion.connectors.bigquery_mapping import DEFAULT_EVENT_NAMES, to_row
from tests.connectors.helpers import all_rows, collect, extract_context, source_context
from tests.fixtures.bigquery import (
    LEGACY_DATASET,
    BigQueryEmulator,
    BigQueryFake,
    expected_rows,
)
from tests.fixtures.notify import wait_until

CONNECTOR = BigQueryConnector()


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    """Stands in for the app's bounded BigQuery pool."""
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="test-bigquery")
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)


def _window(emulator: BigQueryEmulator, back: int, forward: int = 0) -> DateWindow:
    today = emulator.data.today
    return DateWindow(today - timedelta(days=back), today + timedelta(days=forward))


# --- mapping -------------------------------------------------------------------------
def test_mapping_follows_the_ga4_export_fields() -> None:
    row = {
        "event_timestamp": 1_700_000_000_123_456,
        "event_name": "purchase",
        "user_pseudo_id": "123.456",
        "event_bundle_sequence_id": 7,
        "batch_event_index": 2,
        "event_params": [
            {"key": "ga_session_id", "value": {"int_value": 1_699_999_000}},
            {"key": "page_location", "value": {"string_value": "https://s.example/cart?x=1#y"}},
            {"key": "page_title", "value": {"string_value": "Cart"}},
            {"key": "page_referrer", "value": {"string_value": "https://google.com/"}},
            {"key": "engagement_time_msec", "value": {"int_value": 1234}},
            {"key": "session_engaged", "value": {"string_value": "1"}},
            {"key": "currency", "value": {"string_value": "EUR"}},
            {"key": "coupon", "value": {"string_value": "SUMMER"}},
            {"key": "value", "value": {"double_value": 12.5}},
        ],
        "country": "France",
        "city": "Paris",
        "device_category": "mobile",
        "os": "Android",
        "browser": "Chrome",
        "ts_source": "google",
        "ts_medium": "organic",
        "ts_campaign": "(organic)",
        "cts_source": "newsletter",
        "cts_medium": "email",
        "cts_campaign": "autumn",
        "purchase_revenue": 12.3,
        "transaction_id": "T1",
    }
    mapped = to_row(row)
    assert mapped["event_id"] == event_id_for(
        "123.456", 1_700_000_000_123_456, "purchase", 1_699_999_000, 7, 2
    )
    assert mapped["occurred_at"] == datetime(2023, 11, 14, 22, 13, 20, 123_456, tzinfo=UTC)
    assert mapped["user_id"] == "123.456"
    assert mapped["session_id"] == "123.456.1699999000"
    assert mapped["page_path"] == "/cart"
    assert (mapped["page_title"], mapped["referrer"]) == ("Cart", "https://google.com/")
    assert (mapped["source"], mapped["medium"], mapped["campaign"]) == (
        "newsletter",
        "email",
        "autumn",
    )
    assert (mapped["country"], mapped["city"]) == ("France", "Paris")
    assert (mapped["device_category"], mapped["os"], mapped["browser"]) == (
        "mobile",
        "Android",
        "Chrome",
    )
    assert mapped["engagement_time_msec"] == 1234
    assert mapped["session_engaged"] is True
    assert mapped["revenue"] == Decimal("12.3")
    assert mapped["currency"] == "EUR"
    assert mapped["properties"] == {"coupon": "SUMMER", "value": 12.5, "transaction_id": "T1"}
    # The loader accepts it as is.
    assert to_canonical(mapped).event_name == "purchase"

    # Without collected_traffic_source the user-scoped traffic_source is used.
    fallback = to_row({**row, "cts_source": None, "cts_medium": None, "cts_campaign": None})
    assert (fallback["source"], fallback["medium"], fallback["campaign"]) == (
        "google",
        "organic",
        "(organic)",
    )
    # The id is stable across reads and changes with any identifying field.
    assert to_row(row)["event_id"] == mapped["event_id"]
    assert to_row({**row, "batch_event_index": 3})["event_id"] != mapped["event_id"]


# --- against the emulator ------------------------------------------------------------
async def test_window_imports_every_event_name_page_by_page(
    bigquery_emulator: BigQueryEmulator, pool: ThreadPoolExecutor
) -> None:
    data = bigquery_emulator.data
    window = _window(bigquery_emulator, back=3, forward=0)
    ctx = extract_context(
        CONNECTOR,
        bigquery_emulator.config(page_size=4),
        window=window,
        executor=pool,
    )
    batches = await collect(CONNECTOR, ctx)
    rows = all_rows(batches)
    assert len(rows) == data.daily_rows(window.start, window.end)
    # Read page by page: no batch exceeds the page size.
    assert max(len(b.rows) for b in batches) <= 4
    assert sum(1 for b in batches if b.rows) >= len(rows) / 4
    names = Counter(r["event_name"] for r in rows)
    assert set(names) == set(DEFAULT_EVENT_NAMES)
    assert len({r["event_id"] for r in rows}) == len(rows)
    # The last batch carries the cursor.
    assert batches[-1].cursor == {"last_window_end": window.end.isoformat()}
    # Nested records and params land in the canonical columns.
    yesterday = data.today - timedelta(days=1)
    purchase = next(
        r
        for r in rows
        if r["event_name"] == "purchase"
        and r["user_id"] == "user0"
        and r["occurred_at"].date() == yesterday
    )
    assert purchase["session_id"] == "user0.1700000000"
    assert purchase["page_path"] == "/p/0"
    assert purchase["page_title"] == "Product 0"
    assert purchase["referrer"] == "https://google.com/"
    assert (purchase["country"], purchase["city"]) == ("Germany", "Berlin")
    assert (purchase["device_category"], purchase["os"], purchase["browser"]) == (
        "desktop",
        "Linux",
        "Firefox",
    )
    # user0 has a collected_traffic_source; user1 falls back to traffic_source.
    assert (purchase["source"], purchase["medium"], purchase["campaign"]) == (
        "newsletter",
        "email",
        "autumn",
    )
    other = next(r for r in rows if r["user_id"] == "user1")
    assert (other["source"], other["medium"], other["campaign"]) == (
        "google",
        "organic",
        "(organic)",
    )
    assert purchase["revenue"] == Decimal("19.99")
    assert purchase["currency"] == "EUR"
    assert purchase["properties"] == {"ga_session_number": 1, "transaction_id": "T0"}
    engagement = next(r for r in rows if r["event_name"] == "user_engagement")
    assert engagement["engagement_time_msec"] >= 1500
    assert engagement["session_engaged"] is True
    for row in rows:
        to_canonical(row)  # every row is valid for the loader


async def test_intraday_tables_fill_only_days_without_a_daily_table(
    bigquery_emulator: BigQueryEmulator, pool: ThreadPoolExecutor
) -> None:
    data = bigquery_emulator.data
    window = _window(bigquery_emulator, back=1)  # yesterday (daily + intraday) and today
    ctx = extract_context(
        CONNECTOR,
        bigquery_emulator.config(include_intraday=True),
        window=window,
        executor=pool,
    )
    rows = all_rows(await collect(CONNECTOR, ctx))
    yesterday = data.today - timedelta(days=1)
    expected = expected_rows(data.daily[yesterday]) + expected_rows(data.intraday[data.today])
    assert len(rows) == expected
    # Yesterday's intraday rows (tagged users) are never read: the daily table wins.
    assert not [r for r in rows if r["user_id"].startswith("intra-")]
    assert {r["occurred_at"].date() for r in rows} == {yesterday, data.today}

    # Without include_intraday, today contributes nothing yet.
    ctx = extract_context(CONNECTOR, bigquery_emulator.config(), window=window, executor=pool)
    rows = all_rows(await collect(CONNECTOR, ctx))
    assert len(rows) == expected_rows(data.daily[yesterday])


async def test_older_export_schema_without_optional_columns(
    bigquery_emulator: BigQueryEmulator, pool: ThreadPoolExecutor
) -> None:
    data = bigquery_emulator.data
    window = _window(bigquery_emulator, back=2)
    ctx = extract_context(
        CONNECTOR,
        bigquery_emulator.config(dataset=LEGACY_DATASET, event_names=["page_view", "purchase"]),
        window=window,
        executor=pool,
    )
    rows = all_rows(await collect(CONNECTOR, ctx))
    users = data.legacy_daily[data.today - timedelta(days=1)]
    assert len(rows) == users + (users + 1) // 2
    assert {r["browser"] for r in rows} == {None}
    assert {r["source"] for r in rows} == {"google"}


async def test_default_window_reloads_the_trailing_days() -> None:
    config = source_context(CONNECTOR, {"project": "p", "dataset": "analytics_1"}).config
    today = datetime(2026, 3, 10, tzinfo=UTC).date()
    window = CONNECTOR.default_window(config, today)
    assert window == DateWindow(today - timedelta(days=3), today)


async def test_connection_test_reports_tables(
    bigquery_emulator: BigQueryEmulator, pool: ThreadPoolExecutor
) -> None:
    ctx = source_context(CONNECTOR, bigquery_emulator.config(), executor=pool)
    result = await CONNECTOR.test(ctx)
    assert result.ok, result.checks
    assert [c.name for c in result.checks] == ["credentials", "dataset", "tables"]
    assert "3 daily and 2 intraday tables" in result.checks[-1].detail

    ctx = source_context(CONNECTOR, bigquery_emulator.config(dataset="nope"), executor=pool)
    result = await CONNECTOR.test(ctx)
    assert not result.ok
    assert "not found" in result.checks[-1].detail


async def test_missing_dataset_is_terminal(
    bigquery_emulator: BigQueryEmulator, pool: ThreadPoolExecutor
) -> None:
    ctx = extract_context(
        CONNECTOR,
        bigquery_emulator.config(dataset="analytics_999"),
        window=_window(bigquery_emulator, 1),
        executor=pool,
    )
    with pytest.raises(TerminalError, match="not found"):
        await collect(CONNECTOR, ctx)


async def test_no_credentials_without_an_emulator_endpoint_is_terminal(
    pool: ThreadPoolExecutor,
) -> None:
    ctx = extract_context(
        CONNECTOR,
        {"project": "p", "dataset": "analytics_1"},
        window=DateWindow(datetime.now(UTC).date(), datetime.now(UTC).date()),
        executor=pool,
    )
    with pytest.raises(TerminalError, match="service account JSON is required"):
        await collect(CONNECTOR, ctx)


# --- faults, through the REST fake ---------------------------------------------------
def _fake_config(fake: BigQueryFake, **overrides: object) -> dict[str, object]:
    return {
        "project": "demo",
        "dataset": "analytics_1",
        "api_endpoint": fake.endpoint,
        "api_retry_s": 0.5,
        **overrides,
    }


def _today_window() -> DateWindow:
    today = datetime.now(UTC).date()
    return DateWindow(today, today)


async def test_queries_run_in_parallel(bigquery_fake: BigQueryFake) -> None:
    # No job finishes until every query has started: run one after another, the first
    # would wait forever; run in parallel, all six are in flight at once.
    bigquery_fake.behaviour.job_seconds = 600
    pool = ThreadPoolExecutor(max_workers=3)  # fewer threads than queries on purpose
    try:
        ctx = extract_context(
            CONNECTOR, _fake_config(bigquery_fake), window=_today_window(), executor=pool
        )
        task = asyncio.create_task(collect(CONNECTOR, ctx))
        try:
            await wait_until(
                lambda: len(bigquery_fake.jobs) == len(DEFAULT_EVENT_NAMES) or task.done()
            )
            assert not task.done(), task
            bigquery_fake.behaviour.job_seconds = 0
            async with asyncio.timeout(30):  # a hang detector, not a speed bound
                rows = all_rows(await task)
        finally:
            task.cancel()
    finally:
        pool.shutdown(wait=False)
    assert len(rows) == 3 * len(DEFAULT_EVENT_NAMES)
    assert len(bigquery_fake.jobs) == len(DEFAULT_EVENT_NAMES)


async def test_cancelled_run_cancels_the_bigquery_jobs(bigquery_fake: BigQueryFake) -> None:
    bigquery_fake.behaviour.job_seconds = 600  # never finishes by itself
    cancelled = threading.Event()
    pool = ThreadPoolExecutor(max_workers=8)
    try:
        ctx = extract_context(
            CONNECTOR,
            _fake_config(bigquery_fake),
            window=_today_window(),
            executor=pool,
            is_cancelled=cancelled.is_set,
        )
        task = asyncio.create_task(collect(CONNECTOR, ctx))
        deadline = time.monotonic() + 10
        while len(bigquery_fake.jobs) < len(DEFAULT_EVENT_NAMES):
            assert time.monotonic() < deadline, "jobs were not started"
            await asyncio.sleep(0.02)
        cancelled.set()
        with pytest.raises(Exception) as info:  # noqa: PT011
            async with asyncio.timeout(10):
                await task
        assert type(info.value).__name__ == "RunCancelled"
    finally:
        pool.shutdown(wait=False)
    assert sorted(bigquery_fake.cancelled) == sorted(bigquery_fake.jobs)


async def test_interrupted_extract_cancels_the_jobs(bigquery_fake: BigQueryFake) -> None:
    """The runner cancels the task (run timeout, shutdown): jobs are cancelled too."""
    bigquery_fake.behaviour.job_seconds = 600
    pool = ThreadPoolExecutor(max_workers=8)
    try:
        ctx = extract_context(
            CONNECTOR, _fake_config(bigquery_fake), window=_today_window(), executor=pool
        )
        task = asyncio.create_task(collect(CONNECTOR, ctx))
        deadline = time.monotonic() + 10
        while len(bigquery_fake.jobs) < len(DEFAULT_EVENT_NAMES):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        pool.shutdown(wait=False)
    assert sorted(bigquery_fake.cancelled) == sorted(bigquery_fake.jobs)


async def test_query_timeout_is_transient_and_cancels_jobs(bigquery_fake: BigQueryFake) -> None:
    bigquery_fake.behaviour.job_seconds = 600
    pool = ThreadPoolExecutor(max_workers=8)
    try:
        ctx = extract_context(
            CONNECTOR,
            _fake_config(bigquery_fake, query_timeout_s=1, event_names=["page_view"]),
            window=_today_window(),
            executor=pool,
        )
        with pytest.raises(TransientError, match="did not finish within 1 s"):
            await collect(CONNECTOR, ctx)
    finally:
        pool.shutdown(wait=False)
    assert bigquery_fake.cancelled == list(bigquery_fake.jobs)


@pytest.mark.parametrize(
    ("status", "reason", "error", "text"),
    [
        (503, "backendError", TransientError, "unavailable"),
        (500, "internalError", TransientError, "unavailable"),
        (429, "rateLimitExceeded", TransientError, "rate limited"),
        (403, "rateLimitExceeded", TransientError, "rate limited"),
        (403, "accessDenied", TerminalError, "BigQuery Data Viewer"),
        (401, "authError", TerminalError, "rejected the credentials"),
        (404, "notFound", TerminalError, "analytics_<property id>"),
        (400, "bytesBilledLimitExceeded", TerminalError, "maximum_bytes_billed"),
        (400, "invalidQuery", TerminalError, "rejected the request"),
    ],
)
async def test_api_errors_are_classified(
    bigquery_fake: BigQueryFake,
    pool: ThreadPoolExecutor,
    status: int,
    reason: str,
    error: type[Exception],
    text: str,
) -> None:
    bigquery_fake.behaviour.fail_status = status
    bigquery_fake.behaviour.fail_reason = reason
    # Real credentials: a 401 makes the client refresh its token once before giving up.
    secrets = {"service_account_json": _service_account(bigquery_fake)}
    ctx = extract_context(
        CONNECTOR, _fake_config(bigquery_fake), secrets, window=_today_window(), executor=pool
    )
    with pytest.raises(error, match=text):
        await collect(CONNECTOR, ctx)


async def test_network_error_is_transient(pool: ThreadPoolExecutor) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    ctx = extract_context(
        CONNECTOR,
        {
            "project": "demo",
            "dataset": "analytics_1",
            "api_endpoint": f"http://127.0.0.1:{port}",
            "api_retry_s": 0.3,
        },
        window=_today_window(),
        executor=pool,
    )
    with pytest.raises(TransientError):
        await collect(CONNECTOR, ctx)


def _service_account(fake: BigQueryFake) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "demo",
            "private_key_id": "k1",
            "private_key": pem,
            "client_email": "pulse@demo.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": f"{fake.endpoint}/token",
        }
    )


async def test_service_account_credentials_are_used_and_bad_ones_are_terminal(
    bigquery_fake: BigQueryFake, pool: ThreadPoolExecutor
) -> None:
    secrets = {"service_account_json": _service_account(bigquery_fake)}
    ctx = extract_context(
        CONNECTOR,
        _fake_config(bigquery_fake, event_names=["page_view"]),
        secrets,
        window=_today_window(),
        executor=pool,
    )
    assert len(all_rows(await collect(CONNECTOR, ctx))) == 3
    assert "POST /token" in bigquery_fake.calls

    bigquery_fake.behaviour.token_error = True
    ctx = extract_context(
        CONNECTOR,
        _fake_config(bigquery_fake, event_names=["page_view"]),
        secrets,
        window=_today_window(),
        executor=pool,
    )
    with pytest.raises(TerminalError, match="refused the service account credentials"):
        await collect(CONNECTOR, ctx)

    result = await CONNECTOR.test(
        source_context(CONNECTOR, _fake_config(bigquery_fake), secrets, executor=pool)
    )
    assert not result.ok
    assert "refused the service account" in result.checks[-1].detail

    # A key that does not parse is refused when the source is saved (a 400), not at run time.
    with pytest.raises(msgspec.ValidationError, match="not valid JSON"):
        extract_context(
            CONNECTOR,
            _fake_config(bigquery_fake),
            {"service_account_json": "{not json"},
            window=_today_window(),
            executor=pool,
        )


async def test_pages_are_mapped_in_the_worker_processes_to_the_same_rows(
    bigquery_emulator: BigQueryEmulator, pool: ThreadPoolExecutor, worker_pool: WorkerPool
) -> None:
    """With the import workers, a page's GA4 records are mapped and validated in another
    process (the BigQuery threads only fetch): the rows are the same as mapped in-thread."""
    window = _window(bigquery_emulator, back=2, forward=0)
    config = bigquery_emulator.config(page_size=5)
    in_thread = await collect(
        CONNECTOR, extract_context(CONNECTOR, config, window=window, executor=pool)
    )
    in_workers = await collect(
        CONNECTOR,
        extract_context(CONNECTOR, config, window=window, executor=pool, workers=worker_pool),
    )
    prepared = [b.prepared for b in in_workers if b.prepared is not None]
    assert prepared
    assert all(not b.rows for b in in_workers)
    assert {p.pid for p in prepared} <= set(worker_pool.pids())
    assert os.getpid() not in {p.pid for p in prepared}

    def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {r["event_id"]: r for r in rows}

    expected = {
        k: msgspec.structs.asdict(to_canonical(r)) for k, r in by_id(all_rows(in_thread)).items()
    }
    assert by_id(all_rows(in_workers)) == expected
