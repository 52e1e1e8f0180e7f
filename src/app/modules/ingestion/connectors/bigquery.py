"""The ``bigquery_ga4`` source: a Google Analytics 4 BigQuery export.

A run covers a window of dates. The connector lists the dataset's ``events_YYYYMMDD``
(and, when enabled, ``events_intraday_YYYYMMDD``) tables, then starts one
parameterised query per event name, all at once, so a window takes about as long as
its slowest query. Each query's result is read page by page on the app's BigQuery
thread pool (the client blocks) and mapped to canonical rows in the same thread; a
small queue between the readers and the loader bounds memory. When the run stops
(cancel, timeout, failure) the unfinished jobs are cancelled in BigQuery too.

GA4 rewrites daily tables for up to 72 hours, so scheduled runs reload a trailing
window (``reload_days``) and rely on event-id deduplication. A day with a daily table
is never read from its intraday table.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, ClassVar, TypeVar

import msgspec
import structlog
from google.api_core.retry import Retry
from google.cloud import bigquery

from app.core.outbound import STRICT, OutboundPolicy, OutboundRefused
from app.core.validation import BIGINT_MAX, Text
from app.modules.ingestion.connectors import bigquery_client as bq
from app.modules.ingestion.connectors import register_connector
from app.modules.ingestion.connectors.base import (
    Batch,
    DateWindow,
    ExtractContext,
    RunCancelled,
    SourceContext,
    TerminalError,
    TestCheck,
    TestResult,
    TransientError,
)
from app.modules.ingestion.connectors.bigquery_mapping import DEFAULT_EVENT_NAMES, build_query
from app.modules.ingestion.prepare import Prepared, prepare_ga4_rows

log = structlog.get_logger("app.ingestion.bigquery")
T = TypeVar("T")

Project = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9.:_-]*$")
]
Dataset = Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=r"^\w+$")]
EventName = Annotated[str, msgspec.Meta(min_length=1, max_length=40, pattern=r"^\w+$")]
# What google-auth needs to build service-account credentials.
_SERVICE_ACCOUNT_KEYS = ("client_email", "private_key", "token_uri")
WAIT_SLICE_S = 2.0
QUEUE_PAGES = 4
START_WAIT_S = 15.0


class BigQueryConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    project: Project
    dataset: Dataset  # analytics_<property id>
    location: Annotated[Text, msgspec.Meta(max_length=64)] | None = None
    event_names: Annotated[list[EventName], msgspec.Meta(min_length=1, max_length=50)] = (
        msgspec.field(default_factory=lambda: list(DEFAULT_EVENT_NAMES))
    )
    include_intraday: bool = False
    # Days before today a scheduled run reloads (GA4 rewrites tables for ~72 h).
    reload_days: Annotated[int, msgspec.Meta(ge=0, le=30)] = 3
    maximum_bytes_billed: Annotated[int, msgspec.Meta(ge=1, le=BIGINT_MAX)] | None = None
    query_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=21_600)] = 600.0
    # Seconds the client keeps retrying 5xx/429 itself before the engine's backoff.
    api_retry_s: Annotated[float, msgspec.Meta(ge=0, le=600)] = 30.0
    page_size: Annotated[int, msgspec.Meta(ge=1, le=50_000)] = 10_000
    # For emulators and tests: e.g. "http://127.0.0.1:9050".
    api_endpoint: (
        Annotated[str, msgspec.Meta(max_length=2048, pattern=r"^https?://[^\x00]*$")] | None
    ) = None


class BigQuerySecrets(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # The key file's JSON, as a string or an object.
    service_account_json: str | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # Checked the way the connector will read it (bq.service_account_info, then
        # google-auth's from_service_account_info), so a typo is a 400, not a failed run.
        raw = self.service_account_json
        if raw is None or raw == "":
            return
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise ValueError("service_account_json is not valid JSON") from None
        if not isinstance(raw, dict):
            raise ValueError("service_account_json must be a JSON object (a key file)")
        if raw.get("type") != "service_account":
            raise ValueError('service_account_json is not a service account key ("type")')
        missing = [
            k for k in _SERVICE_ACCOUNT_KEYS if not isinstance(raw.get(k), str) or not raw[k]
        ]
        if missing:
            raise ValueError(f"service_account_json lacks {', '.join(missing)}")


def check_endpoint_override(url: str, outbound: OutboundPolicy | None) -> None:
    """``api_endpoint`` sends the query (with anonymous credentials) wherever a tenant
    admin points it: honoured only for a host the operator allows."""
    try:
        (outbound or STRICT).check_endpoint(url)
    except OutboundRefused as exc:
        raise TerminalError(f"config.api_endpoint: {exc}") from None


class _Blocking:
    """Runs the blocking client on the app's BigQuery pool, each call within a timeout."""

    def __init__(self, executor: Executor | None) -> None:
        if executor is None:
            # The app creates the pool at start-up and shuts it down at shutdown
            # (core.lifespan); a pool made here would be nobody's to close.
            raise TerminalError("no BigQuery thread pool was given to the connector")
        self.executor = executor

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        return self.executor.submit(fn)

    async def __call__(self, timeout_s: float, fn: Callable[..., T], *args: Any) -> T:
        future = asyncio.wrap_future(self.executor.submit(fn, *args))
        async with asyncio.timeout(timeout_s):
            return await future


# What a page reader hands over: (query, rows or prepared rows, bytes scanned), an error,
# or the query's name when it is read to its end.
_Page = tuple[str, list[dict[str, Any]] | Prepared, int] | BaseException | str


class BigQueryConnector:
    kind: ClassVar[str] = "bigquery_ga4"
    config_type: ClassVar[type[msgspec.Struct]] = BigQueryConfig
    secrets_type: ClassVar[type[msgspec.Struct]] = BigQuerySecrets

    def default_window(self, config: Any, today: date) -> DateWindow | None:
        assert isinstance(config, BigQueryConfig)
        return DateWindow(today - timedelta(days=config.reload_days), today)

    async def _client(self, ctx: SourceContext, run: _Blocking) -> bigquery.Client:
        config: BigQueryConfig = ctx.config
        secrets: BigQuerySecrets = ctx.secrets
        info = bq.service_account_info(secrets.service_account_json)
        if config.api_endpoint:
            check_endpoint_override(config.api_endpoint, ctx.outbound)
        return await run(
            30, bq.make_client, config.project, config.location, config.api_endpoint, info
        )

    async def test(self, ctx: SourceContext) -> TestResult:
        config: BigQueryConfig = ctx.config
        run = _Blocking(ctx.executor)
        retry = bq.api_retry(min(config.api_retry_s, 5.0))
        checks: list[TestCheck] = []
        client: bigquery.Client | None = None
        try:
            client = await self._client(ctx, run)
            checks.append(TestCheck("credentials", True, "service account key accepted"))
            dataset = await run(
                20, client.get_dataset, f"{config.project}.{config.dataset}", retry, 15
            )
            checks.append(
                TestCheck("dataset", True, f"{dataset.full_dataset_id} ({dataset.location})")
            )
            tables = await run(
                20, bq.list_export_tables, client, config.project, config.dataset, retry, 15
            )
        except Exception as exc:
            error = bq.classify(exc, what="test")
            stage = "dataset" if checks else "credentials"
            checks.append(TestCheck(stage, False, str(error)))
            return TestResult(ok=False, checks=checks)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()  # type: ignore[no-untyped-call]
        days = sorted(tables.daily | tables.intraday)
        if not days:
            checks.append(TestCheck("tables", False, "no events_YYYYMMDD tables in the dataset"))
            return TestResult(ok=False, checks=checks)
        detail = (
            f"{len(tables.daily)} daily and {len(tables.intraday)} intraday tables, "
            f"{days[0].isoformat()}..{days[-1].isoformat()}"
        )
        checks.append(TestCheck("tables", True, detail))
        return TestResult(ok=True, checks=checks)

    async def extract(self, ctx: ExtractContext) -> AsyncIterator[Batch]:
        config: BigQueryConfig = ctx.config
        window = ctx.window or self.default_window(config, datetime.now(UTC).date())
        assert window is not None
        run = _Blocking(ctx.executor)
        retry = bq.api_retry(config.api_retry_s)
        ctx.progress.report(stage="listing tables", item=f"{config.dataset}")
        try:
            client = await self._client(ctx, run)
            tables = await run(
                60, bq.list_export_tables, client, config.project, config.dataset, retry, 30
            )
        except Exception as exc:
            raise bq.classify(exc, what="listing the dataset's tables") from exc
        if tables.newest is None:
            raise TerminalError(
                f"dataset {config.project}.{config.dataset} has no GA4 export tables "
                "(events_YYYYMMDD); is the BigQuery link of the property set up?"
            )
        days = window.days()
        daily = [d for d in days if d in tables.daily]
        intraday = (
            [d for d in days if d in tables.intraday and d not in tables.daily]
            if config.include_intraday
            else []
        )
        if daily or intraday:
            async for batch in self._read_window(ctx, client, run, retry, window, tables, intraday):
                yield batch
        else:
            client.close()  # type: ignore[no-untyped-call]
            log.info(
                "bigquery.window_empty",
                tenant_id=ctx.tenant_id,
                run_id=str(ctx.run_id),
                start=window.start.isoformat(),
                end=window.end.isoformat(),
            )
        yield Batch(
            rows=[],
            item=f"{config.dataset} {window.start.isoformat()}..{window.end.isoformat()}",
            cursor={"last_window_end": window.end.isoformat()},
        )

    async def _read_window(
        self,
        ctx: ExtractContext,
        client: bigquery.Client,
        run: _Blocking,
        retry: Retry,
        window: DateWindow,
        tables: bq.ExportTables,
        intraday: list[date],
    ) -> AsyncIterator[Batch]:
        config: BigQueryConfig = ctx.config
        assert tables.newest is not None
        try:
            fields = await run(
                60,
                bq.table_fields,
                client,
                config.project,
                config.dataset,
                tables.newest,
                retry,
                30,
            )
        except Exception as exc:
            raise bq.classify(exc, what=f"reading the schema of {tables.newest}") from exc
        sql = build_query(config.project, config.dataset, fields, intraday=bool(intraday))
        jobs: dict[str, bigquery.QueryJob] = {}
        starts: dict[str, concurrent.futures.Future[bigquery.QueryJob]] = {}
        queue: asyncio.Queue[
            tuple[str, list[dict[str, Any]] | Prepared, int] | BaseException | str
        ] = asyncio.Queue(maxsize=QUEUE_PAGES)
        readers: list[asyncio.Task[None]] = []
        try:
            # Start every job first (side by side): BigQuery runs them in parallel whatever
            # our pool size. The futures are kept so an interrupted start is still cancelled.
            ctx.raise_if_cancelled()
            for name in config.event_names:
                starts[name] = run.submit(
                    functools.partial(
                        bq.start_query,
                        client,
                        sql,
                        event_name=name,
                        start=window.start,
                        end=window.end,
                        intraday_days=intraday or None,
                        maximum_bytes_billed=config.maximum_bytes_billed,
                        timeout_s=config.query_timeout_s,
                        labels={"pulse_run": str(ctx.run_id)[:63]},
                        retry=retry,
                    )
                )
            for name, future in starts.items():
                try:
                    async with asyncio.timeout(60):
                        jobs[name] = await asyncio.shield(asyncio.wrap_future(future))
                except Exception as exc:
                    raise bq.classify(exc, what=f"starting the {name} query") from exc
            log.info(
                "bigquery.jobs_started",
                tenant_id=ctx.tenant_id,
                run_id=str(ctx.run_id),
                jobs={n: j.job_id for n, j in jobs.items()},
            )
            page_size = min(config.page_size, ctx.batch_rows)
            for name, job in jobs.items():
                readers.append(
                    asyncio.create_task(
                        self._read_job(ctx, run, retry, name, job, page_size, queue),
                        name=f"bigquery-read-{name}",
                    )
                )
            remaining = len(readers)
            while remaining:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, str):
                    remaining -= 1
                    continue
                name, rows, bytes_read = item
                item_name = f"{config.dataset} {name}"
                if isinstance(rows, Prepared):
                    yield Batch(rows=[], prepared=rows, item=item_name, bytes_read=bytes_read)
                else:
                    yield Batch(rows=rows, item=item_name, bytes_read=bytes_read)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await self._cancel_unfinished(ctx, run, starts)
            with contextlib.suppress(Exception):
                client.close()  # type: ignore[no-untyped-call]

    async def _read_job(
        self,
        ctx: ExtractContext,
        run: _Blocking,
        retry: Retry,
        name: str,
        job: bigquery.QueryJob,
        page_size: int,
        queue: asyncio.Queue[
            tuple[str, list[dict[str, Any]] | Prepared, int] | BaseException | str
        ],
    ) -> None:
        config: BigQueryConfig = ctx.config
        what = f"the {name} query"
        try:
            deadline = time.monotonic() + config.query_timeout_s
            # Wait in slices: a cancelled run frees its thread within one slice.
            while not await run(WAIT_SLICE_S + 30, bq.wait_slice, job, WAIT_SLICE_S, retry):
                if ctx.cancelled():
                    raise RunCancelled()
                if time.monotonic() > deadline:
                    raise TransientError(
                        f"{what} did not finish within {config.query_timeout_s:g} s"
                    )
            pages = await run(90, bq.open_pages, job, page_size, retry)
            first = True
            workers = ctx.workers
            while True:
                if workers is None:
                    rows = await run(120, bq.next_page, pages)
                else:
                    rows = await run(120, functools.partial(bq.next_page, mapped=False), pages)
                if rows is None:
                    break
                scanned = int(job.total_bytes_processed or 0) if first else 0
                first = False
                if workers is None:
                    await queue.put((name, rows, scanned))
                else:
                    # Mapped, validated and turned into COPY text in a worker process.
                    prepared = await workers.run(
                        prepare_ga4_rows, ctx.tenant_id, str(ctx.source_id), rows
                    )
                    await queue.put((name, prepared, scanned))
            await queue.put(name)
        except asyncio.CancelledError:
            raise
        except RunCancelled as exc:
            await queue.put(exc)
        except BaseException as exc:
            await queue.put(bq.classify(exc, what=what))

    async def _cancel_unfinished(
        self,
        ctx: ExtractContext,
        run: _Blocking,
        starts: dict[str, concurrent.futures.Future[bigquery.QueryJob]],
    ) -> None:
        if not starts:
            return
        # A start interrupted mid-call still creates its job: wait for it to know the job.
        await asyncio.wait([asyncio.wrap_future(f) for f in starts.values()], timeout=START_WAIT_S)
        jobs = [f.result() for f in starts.values() if f.done() and f.exception() is None]
        unfinished = [j for j in jobs if j.state != "DONE"]
        if not unfinished:
            return
        results = await asyncio.gather(
            *(run(15, bq.cancel_job, job) for job in unfinished), return_exceptions=True
        )
        for job, result in zip(unfinished, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "bigquery.job_cancel_failed",
                    run_id=str(ctx.run_id),
                    job_id=job.job_id,
                    error=type(result).__name__,
                )
            else:
                log.info("bigquery.job_cancelled", run_id=str(ctx.run_id), job_id=job.job_id)


register_connector(BigQueryConnector())
