"""Benchmark profiles: how much data, how long each load, how many repetitions."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    # Main tenant: ``days`` days of synthetic traffic ending yesterday (UTC).
    days: int
    sessions_per_day: int
    # The second, smaller tenant (same days).
    small_sessions_per_day: int
    # The generator draws users from a pool that depends on the seed; a new seed every
    # ``seed_block_days`` days brings new users, as a real property would.
    seed_block_days: int
    # Dashboard load: seconds per measured run, runs per figure, concurrency levels.
    load_seconds: float
    load_runs: int
    concurrency: tuple[int, ...]
    # Ingestion: rows of the imported file, and the rows of the RSS check (0 = skipped).
    ingest_rows: int
    rss_check_rows: int
    ingest_runs: int
    # Isolation: concurrent imports and their size (days x sessions of the synthetic source).
    isolation_imports: int
    isolation_days: int
    isolation_sessions_per_day: int
    # BigQuery fake: rows per event query and rows per page.
    bigquery_pages: int
    bigquery_runs: int

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def approx_events(self) -> int:
        # The generator makes about 6.1 events per session (measured on the full set).
        return int(self.days * (self.sessions_per_day + self.small_sessions_per_day) * 6.1)


PROFILES: dict[str, Profile] = {
    # A smoke run for development and CI: seconds of data, a couple of seconds per load.
    "tiny": Profile(
        name="tiny",
        days=100,
        sessions_per_day=40,
        small_sessions_per_day=5,
        seed_block_days=5,
        load_seconds=2.0,
        load_runs=2,
        concurrency=(10, 100),
        ingest_rows=20_000,
        rss_check_rows=0,
        ingest_runs=1,
        isolation_imports=8,
        isolation_days=2,
        isolation_sessions_per_day=200,
        bigquery_pages=2,
        bigquery_runs=1,
    ),
    # ~1M events: `make bench-quick`, a few minutes once the database is cached.
    "quick": Profile(
        name="quick",
        days=120,
        sessions_per_day=1_000,
        small_sessions_per_day=80,
        seed_block_days=5,
        load_seconds=3.0,
        load_runs=3,
        concurrency=(10, 50, 100),
        # A quarter of the full profile's file: the same path, in a quarter of the time.
        ingest_rows=250_000,
        rss_check_rows=0,
        ingest_runs=1,
        isolation_imports=8,
        isolation_days=3,
        isolation_sessions_per_day=2_000,
        bigquery_pages=3,
        bigquery_runs=3,
    ),
    # The profile: 10M events over 365 days for the main tenant, plus a small one.
    "full": Profile(
        name="full",
        days=365,
        sessions_per_day=4_600,  # about 10.2M events for the main tenant
        small_sessions_per_day=300,
        seed_block_days=5,
        load_seconds=10.0,
        load_runs=3,
        concurrency=(10, 50, 100),
        ingest_rows=1_000_000,
        rss_check_rows=5_000_000,
        ingest_runs=2,
        isolation_imports=8,
        isolation_days=5,
        isolation_sessions_per_day=3_000,
        bigquery_pages=4,
        bigquery_runs=3,
    ),
}
