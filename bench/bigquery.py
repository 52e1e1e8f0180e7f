"""BigQuery parallelism: the six event queries of one window, side by side vs one after
another, through the real ``bigquery_ga4`` connector (google-cloud-bigquery client on a
thread pool) against a loopback fake of the BigQuery REST API that takes 500 ms to
answer each page of query results.

Parallel: one extraction with the six default event names (the connector starts every
job, then reads their pages concurrently). Sequential: six extractions with one event
name each, one after another. Same pages, same rows, same client.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bench.profiles import Profile

PROJECT = "bench"
DATASET = "analytics_1"
PAGE_DELAY_S = 0.5
ROWS_PER_PAGE = 500
_FIELDS = ("event_timestamp", "event_name", "user_pseudo_id", "event_bundle_sequence_id")


class SlowBigQuery:
    """Just enough of the BigQuery v2 REST API for the connector: dataset, tables, table
    schema, query jobs, paged query results (each page after ``PAGE_DELAY_S``)."""

    def __init__(self, pages: int, day: date) -> None:
        self.pages = pages
        self.day = day
        self.jobs: dict[str, str] = {}
        self.page_requests = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                fake.handle(self, "GET")

            def do_POST(self) -> None:
                fake.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _job(self, job_id: str) -> dict[str, Any]:
        return {
            "kind": "bigquery#job",
            "id": f"{PROJECT}:US.{job_id}",
            "jobReference": {"projectId": PROJECT, "jobId": job_id, "location": "US"},
            "configuration": {"query": {"query": "SELECT 1", "useLegacySql": False}},
            "status": {"state": "DONE"},
            "statistics": {"query": {"totalBytesProcessed": "1000"}},
        }

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length) or b"{}") if length else {}
        url = urlsplit(h.path)
        query = parse_qs(url.query)
        parts = url.path.strip("/").split("/")  # bigquery v2 projects P ...
        rest = parts[4:]
        day = self.day.strftime("%Y%m%d")
        if rest[:1] == ["datasets"] and len(rest) == 2:
            ref = {"projectId": PROJECT, "datasetId": rest[1]}
            self._send(h, 200, {"id": f"{PROJECT}:{rest[1]}", "datasetReference": ref})
        elif rest[:1] == ["datasets"] and rest[2:3] == ["tables"] and len(rest) == 3:
            ref = {"projectId": PROJECT, "datasetId": rest[1], "tableId": f"events_{day}"}
            self._send(h, 200, {"tables": [{"tableReference": ref}]})
        elif rest[:1] == ["datasets"] and len(rest) == 4:
            ref = {"projectId": PROJECT, "datasetId": rest[1], "tableId": rest[3]}
            fields = [{"name": n, "type": "STRING"} for n in (*_FIELDS, "event_params")]
            self._send(h, 200, {"tableReference": ref, "schema": {"fields": fields}})
        elif rest == ["jobs"] and method == "POST":
            job_id = body.get("jobReference", {}).get("jobId") or uuid.uuid4().hex
            name = next(
                p["parameterValue"]["value"]
                for p in body["configuration"]["query"]["queryParameters"]
                if p["name"] == "event_name"
            )
            with self.lock:
                self.jobs[job_id] = name
            self._send(h, 200, self._job(job_id))
        elif rest[:1] == ["jobs"] and len(rest) == 3 and rest[2] == "cancel":
            self._send(h, 200, {"job": self._job(rest[1])})
        elif rest[:1] == ["jobs"] and len(rest) == 2:
            self._send(h, 200, self._job(rest[1]))
        elif rest[:1] == ["queries"] and len(rest) == 2:
            self._results(h, rest[1], query)
        else:
            self._send(h, 404, {"error": {"code": 404, "message": f"no route {url.path}"}})

    def _results(self, h: BaseHTTPRequestHandler, job_id: str, query: dict[str, list[str]]) -> None:
        ref = {"projectId": PROJECT, "jobId": job_id, "location": "US"}
        schema = {
            "fields": [
                {"name": "event_timestamp", "type": "INTEGER"},
                {"name": "event_name", "type": "STRING"},
                {"name": "user_pseudo_id", "type": "STRING"},
                {"name": "event_bundle_sequence_id", "type": "INTEGER"},
            ]
        }
        if (query.get("maxResults") or [""])[0] == "0":
            # A completion check, not a page of rows.
            self._send(
                h,
                200,
                {
                    "kind": "bigquery#getQueryResultsResponse",
                    "jobReference": ref,
                    "jobComplete": True,
                    "totalRows": str(self.pages * ROWS_PER_PAGE),
                    "schema": schema,
                },
            )
            return
        page = int((query.get("pageToken") or ["0"])[0])
        time.sleep(PAGE_DELAY_S)  # the slow page (this handler's own thread)
        with self.lock:
            self.page_requests += 1
            name = self.jobs.get(job_id, "page_view")
        base_us = int(datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC).timestamp())
        base_us = base_us * 1_000_000 + 3_600_000_000
        rows = [
            {
                "f": [
                    {"v": str(base_us + page * ROWS_PER_PAGE + i)},
                    {"v": name},
                    {"v": f"u{page}-{i}"},
                    {"v": str(page * ROWS_PER_PAGE + i)},
                ]
            }
            for i in range(ROWS_PER_PAGE)
        ]
        out: dict[str, Any] = {
            "kind": "bigquery#getQueryResultsResponse",
            "jobReference": ref,
            "jobComplete": True,
            "totalRows": str(self.pages * ROWS_PER_PAGE),
            "rows": rows,
            "schema": schema,
        }
        if page + 1 < self.pages:
            out["pageToken"] = str(page + 1)
        self._send(h, 200, out)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def extract(endpoint: str, day: date, names: list[str], executor: ThreadPoolExecutor) -> int:
    """One extraction of ``names`` through the connector; the number of rows read."""
    from app.core.outbound import OutboundPolicy
    from app.modules.ingestion.connectors import get_connector
    from app.modules.ingestion.connectors.base import DateWindow, ExtractContext

    connector = get_connector("bigquery_ga4")
    if connector is None:
        raise RuntimeError("the bigquery_ga4 connector is not in this build")
    config = connector.config_type(  # type: ignore[call-arg]
        project=PROJECT,
        dataset=DATASET,
        event_names=names,
        api_endpoint=endpoint,
        page_size=ROWS_PER_PAGE,
        api_retry_s=5.0,
    )
    ctx = ExtractContext(
        tenant_id="bench-bq",
        source_id=uuid.uuid4(),
        config=config,
        secrets=connector.secrets_type(),
        timezone="UTC",
        executor=executor,
        window=DateWindow(day, day),
        batch_rows=ROWS_PER_PAGE,
        # The fake listens on loopback: allowed as an operator would (PULSE_OUTBOUND_ALLOW).
        outbound=OutboundPolicy.from_allow_list("127.0.0.1/32"),
    )
    rows = 0
    async with asyncio.timeout(600):
        async for batch in connector.extract(ctx):
            rows += len(batch.rows)
    return rows


def run(profile: Profile, log: Callable[[str], None]) -> dict[str, Any]:
    from app.modules.ingestion.connectors.bigquery_mapping import DEFAULT_EVENT_NAMES

    names = list(DEFAULT_EVENT_NAMES)
    day = datetime.now(UTC).date() - timedelta(days=2)
    fake = SlowBigQuery(profile.bigquery_pages, day)
    executor = ThreadPoolExecutor(max_workers=12, thread_name_prefix="bench-bigquery")
    parallel: list[float] = []
    sequential: list[float] = []
    rows_parallel = rows_sequential = 0
    try:
        # Warm-up, not measured: imports, the client's first-use costs.
        asyncio.run(extract(fake.endpoint, day, names[:1], executor))
        for _ in range(profile.bigquery_runs):
            started = time.perf_counter()
            rows_parallel = asyncio.run(extract(fake.endpoint, day, names, executor))
            parallel.append(time.perf_counter() - started)
            started = time.perf_counter()
            rows_sequential = 0
            for name in names:
                rows_sequential += asyncio.run(extract(fake.endpoint, day, [name], executor))
            sequential.append(time.perf_counter() - started)
            log(
                f"  bigquery: parallel {parallel[-1]:.2f}s ({rows_parallel} rows),"
                f" sequential {sequential[-1]:.2f}s ({rows_sequential} rows)"
            )
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        fake.close()
    import statistics

    p, s = statistics.median(parallel), statistics.median(sequential)
    return {
        "queries": len(names),
        "pages_per_query": profile.bigquery_pages,
        "page_delay_s": PAGE_DELAY_S,
        "rows_parallel": rows_parallel,
        "rows_sequential": rows_sequential,
        "parallel_s": round(p, 2),
        "parallel_spread": [round(min(parallel), 2), round(max(parallel), 2)],
        "sequential_s": round(s, 2),
        "sequential_spread": [round(min(sequential), 2), round(max(sequential), 2)],
        "speedup": round(s / p, 2),
        "ideal_parallel_s": profile.bigquery_pages * PAGE_DELAY_S,
    }
