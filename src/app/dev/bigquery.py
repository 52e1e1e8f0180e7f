"""The BigQuery emulator for development, seeded with GA4-export-shaped demo data.

Started only when the optional ``bqemulator`` package (and its DuckDB spatial extension
from PyPI) is installed; the emulator runs as a child process on loopback and the
seeding uses the real ``google-cloud-bigquery`` client from a worker thread.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from app.modules.ingestion import iter_day_events

PROJECT = "demo"
DATASET = "analytics_100200300"


@dataclass(frozen=True)
class DevBigQuery:
    endpoint: str
    project: str
    dataset: str
    rest_port: int = 0
    grpc_port: int = 0


def available() -> bool:
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("bqemulator", "duckdb", "duckdb_extension_spatial")
    )


def install_spatial_extension() -> None:
    """Once per machine: DuckDB's spatial extension from the PyPI wheel (works offline)."""
    import duckdb
    import duckdb_extension_spatial

    path = (
        Path(duckdb_extension_spatial.__file__).parent
        / "extensions"
        / f"v{duckdb.__version__}"
        / "spatial.duckdb_extension"
    )
    con = duckdb.connect()
    try:
        con.execute(f"INSTALL '{path}'")
    finally:
        con.close()


def _free_port(preferred: int = 0) -> int:
    """``preferred`` when it can be bound on loopback now, otherwise any free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            # As the emulator's server will (SO_REUSEADDR): the last run's connections in
            # TIME_WAIT must not make its port look taken.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


def ga4_schema() -> list[Any]:
    from google.cloud.bigquery import SchemaField as F

    value = F("value", "RECORD", fields=[
        F("string_value", "STRING"), F("int_value", "INTEGER"),
        F("float_value", "FLOAT"), F("double_value", "FLOAT"),
    ])  # fmt: skip
    return [
        F("event_date", "STRING"),
        F("event_timestamp", "INTEGER"),
        F("event_name", "STRING"),
        F("event_params", "RECORD", mode="REPEATED", fields=[F("key", "STRING"), value]),
        F("event_bundle_sequence_id", "INTEGER"),
        F("batch_event_index", "INTEGER"),
        F("user_pseudo_id", "STRING"),
        F("geo", "RECORD", fields=[F("country", "STRING"), F("city", "STRING")]),
        F(
            "device",
            "RECORD",
            fields=[
                F("category", "STRING"),
                F("operating_system", "STRING"),
                F("web_info", "RECORD", fields=[F("browser", "STRING")]),
            ],
        ),
        F(
            "traffic_source",
            "RECORD",
            fields=[
                F("name", "STRING"),
                F("medium", "STRING"),
                F("source", "STRING"),
            ],
        ),
        F(
            "collected_traffic_source",
            "RECORD",
            fields=[
                F("manual_campaign_name", "STRING"),
                F("manual_source", "STRING"),
                F("manual_medium", "STRING"),
            ],
        ),
        F(
            "ecommerce",
            "RECORD",
            fields=[
                F("purchase_revenue", "FLOAT"),
                F("transaction_id", "STRING"),
            ],
        ),
    ]


def _param(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"string_value": "1" if value else "0"}}
    if isinstance(value, int):
        return {"key": key, "value": {"int_value": value}}
    return {"key": key, "value": {"string_value": str(value)}}


def ga4_rows(seed: int, day: date, sessions: int) -> Iterator[dict[str, Any]]:
    """The synthetic generator's events for ``day`` in the GA4 export's shape."""
    session_numbers: dict[str, int] = {}
    for index, event in enumerate(iter_day_events(seed, day, sessions)):
        session_id = str(event["session_id"])
        ga_session_id = session_numbers.setdefault(session_id, 1_700_000_000 + len(session_numbers))
        params = [
            _param("ga_session_id", ga_session_id),
            _param("page_location", f"https://shop.example{event.get('page_path') or '/'}"),
            _param("page_title", event.get("page_title") or ""),
            _param("session_engaged", bool(event.get("session_engaged"))),
        ]
        if event.get("referrer"):
            params.append(_param("page_referrer", event["referrer"]))
        if event.get("engagement_time_msec"):
            params.append(_param("engagement_time_msec", int(event["engagement_time_msec"])))
        if event.get("currency"):
            params.append(_param("currency", event["currency"]))
        occurred: datetime = event["occurred_at"]
        revenue = event.get("revenue")
        yield {
            "event_date": day.strftime("%Y%m%d"),
            "event_timestamp": int(occurred.timestamp() * 1_000_000),
            "event_name": event["event_name"],
            "event_params": params,
            "event_bundle_sequence_id": index,
            "batch_event_index": 0,
            "user_pseudo_id": event["user_id"],
            "geo": {"country": event.get("country"), "city": event.get("city")},
            "device": {
                "category": event.get("device_category"),
                "operating_system": event.get("os"),
                "web_info": {"browser": event.get("browser")},
            },
            "traffic_source": {
                "name": event.get("campaign"),
                "medium": event.get("medium"),
                "source": event.get("source"),
            },
            "collected_traffic_source": None,
            "ecommerce": (
                {"purchase_revenue": float(Decimal(revenue)), "transaction_id": f"T{index}"}
                if revenue is not None
                else None
            ),
        }


class EmulatorExited(RuntimeError):
    """The emulator process ended during start-up (e.g. its port was taken meanwhile)."""


def _wait_ready(url: str, proc: subprocess.Popen[bytes], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmulatorExited("the BigQuery emulator exited during start-up")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        # HTTPException: something else (not HTTP) answers on the port until it exits.
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException):
            pass
        time.sleep(0.2)  # worker thread: polling a child process's readiness
    raise RuntimeError(f"the BigQuery emulator was not ready within {deadline_s:.0f} s")


def _seed(endpoint: str, *, seed: int, sessions_per_day: int, days: int) -> None:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options=ClientOptions(api_endpoint=endpoint),
    )
    try:
        client.create_dataset(f"{PROJECT}.{DATASET}", exists_ok=True)
        # The emulator keeps its tables across restarts: only days not seeded yet are new.
        # (A start interrupted while seeding may leave its last day short: `make clean`.)
        existing = {t.table_id for t in client.list_tables(f"{PROJECT}.{DATASET}")}
        today = datetime.now(UTC).date()
        for offset in range(days, 0, -1):
            day = today - timedelta(days=offset)
            if f"events_{day:%Y%m%d}" in existing:
                continue
            table = client.create_table(
                bigquery.Table(f"{PROJECT}.{DATASET}.events_{day:%Y%m%d}", schema=ga4_schema()),
                exists_ok=True,
            )
            rows = list(ga4_rows(seed, day, sessions_per_day))
            for start in range(0, len(rows), 2000):
                errors = client.insert_rows_json(table, rows[start : start + 2000])
                if errors:
                    raise RuntimeError(f"seeding {table.table_id} failed: {errors[:3]}")
    finally:
        client.close()  # type: ignore[no-untyped-call]


class DevBigQueryProcess:
    """Owns the emulator child process. ``start``/``stop`` are blocking (call via a thread)."""

    def __init__(self, log_path: Path, data_dir: Path | None = None) -> None:
        self._log_path = log_path
        self._data_dir = data_dir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, *, rest_port: int = 0, grpc_port: int = 0) -> DevBigQuery:
        """Start on the given ports when free (a source keeps its endpoint across restarts);
        returns once the emulator answers. Seeding is separate (:meth:`seed`).

        A port found free can be taken by another process before the emulator binds it;
        then the emulator exits and is started again on other ports.
        """
        install_spatial_extension()
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        storage: list[str] = []
        if self._data_dir is not None:
            # Persistent: a restart reuses the seeded tables instead of loading them again.
            self._data_dir.mkdir(parents=True, exist_ok=True)
            storage = ["--persistent", "--data-dir", str(self._data_dir)]
        for attempt in range(3):
            rest = _free_port(rest_port if attempt == 0 else 0)
            grpc = _free_port(grpc_port if attempt == 0 and grpc_port != rest else 0)
            try:
                endpoint = self._launch(rest, grpc, storage)
            except EmulatorExited:
                if attempt == 2:
                    raise
                continue
            return DevBigQuery(
                endpoint=endpoint, project=PROJECT, dataset=DATASET, rest_port=rest, grpc_port=grpc
            )
        raise AssertionError("unreachable")

    def _launch(self, rest: int, grpc: int, storage: list[str]) -> str:
        with self._log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
                [sys.executable, "-m", "bqemulator", "start",
                 "--rest-host", "127.0.0.1", "--rest-port", str(rest),
                 "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc),
                 "--project", PROJECT, "--log-level", "warning", *storage],
                stdout=log_file, stderr=subprocess.STDOUT,
                # No Avro extension: its download from extensions.duckdb.org only times out
                # offline, slowing every start; Pulse never loads Avro.
                env={**os.environ, "PYTHONUNBUFFERED": "1",
                     "BQEMU_ENABLE_FORMAT_EXTENSIONS": "false"},
            )  # fmt: skip
        endpoint = f"http://127.0.0.1:{rest}"
        _wait_ready(f"{endpoint}/bigquery/v2/projects/{PROJECT}/datasets", self._proc, 120)
        return endpoint

    @staticmethod
    def seed(bq: DevBigQuery, *, seed: int, sessions_per_day: int, days: int) -> None:
        """Blocking: fill the days before today that have no table yet."""
        _seed(bq.endpoint, seed=seed, sessions_per_day=sessions_per_day, days=days)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def bigquery_source(bq: DevBigQuery) -> dict[str, Any]:
    return {
        "kind": "bigquery_ga4",
        "name": "App events (BigQuery GA4 export)",
        "config": {
            "project": bq.project,
            "dataset": bq.dataset,
            "api_endpoint": bq.endpoint,
            "reload_days": 14,
            "query_timeout_s": 120,
            "api_retry_s": 5,
        },
        "schedule": {"interval_s": 900},
    }
