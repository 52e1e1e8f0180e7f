"""Ingestion throughput: a CSV.gz over loopback SFTP into the events table, through the
real engine in the Pulse process, against PostgreSQL's own COPY of the same rows.

* Pulse: a fresh ``python -m app serve`` (so its peak RSS, VmHWM, belongs to the run), a
  tenant and an ``sftp`` source created through the API, a manual run, polled until it
  ends. Rows/s from the run's own started_at/finished_at.
* Baseline, same run: the same rows, decompressed, COPYed into a staging table and
  merged with the engine's statement shape (``INSERT ... ON CONFLICT DO NOTHING
  RETURNING``) into a table created ``LIKE events INCLUDING ALL`` (same indexes). The
  engine does more per row (parsing and validation in its worker processes, the rollups
  added per row loaded): the ratio (target >= 0.7) says what that costs.
* Full profile: a 5M-row file through the same path, for peak RSS only. Peak RSS is
  reported for the app process and for each import worker process (its descendants).

If the ``sftp`` connector is not in this build, the engine part falls back to the
``synthetic`` source over the same days (same rows) and the report says so.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import os
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from app.dev.sftp import DevSftp, DevSftpThread
from bench.database import DATA_ROOT, Dataset
from bench.issuer import Issuer
from bench.metrics import lag_between, scrape_lag
from bench.profiles import Profile
from bench.servers import Server, proc_status, pulse

INGEST_SEED = 4242
SESSIONS_PER_DAY = 13_000  # about 100k rows a day
ROWS_PER_DAY = int(SESSIONS_PER_DAY * 6.1)  # the generator's events per session (measured)
FILE_FORMAT = 2
FINAL = {"succeeded", "failed", "cancelled"}
BASELINE_TABLE = "bench_copy_baseline"


def plan_days(rows: int, today: date) -> list[date]:
    count = max(1, -(-rows // ROWS_PER_DAY))
    last = today - timedelta(days=2)
    return [last - timedelta(days=count - 1 - i) for i in range(count)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _day_csv(seed: int, day: date, sessions: int) -> tuple[str, int]:
    """Worker process: one day of synthetic events as CSV lines (canonical columns)."""
    from app.modules.events import CANONICAL_FIELDS
    from app.modules.ingestion.connectors.synthetic import iter_day_events

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    count = 0
    for row in iter_day_events(seed, day, sessions):
        row.setdefault("properties", {})  # the events table's column is NOT NULL
        writer.writerow([_cell(row.get(name)) for name in CANONICAL_FIELDS])
        count += 1
    return buffer.getvalue(), count


def build_files(days: Sequence[date], log: Callable[[str], None]) -> tuple[Path, Path, int]:
    """``events.csv.gz`` (for SFTP) and ``events.csv`` (for COPY) with the days' events,
    cached under bench/.data/files/ by content."""
    from app.modules.events import CANONICAL_FIELDS

    key = f"v{FILE_FORMAT}-{INGEST_SEED}-{SESSIONS_PER_DAY}-{days[0]}-{len(days)}"
    home = DATA_ROOT / "files" / key
    gz_path, csv_path, meta = home / "events.csv.gz", home / "events.csv", home / "rows.json"
    if meta.exists():
        return gz_path, csv_path, int(json.loads(meta.read_text())["rows"])
    home.mkdir(parents=True, exist_ok=True)
    log(f"  writing {len(days)} days of events to {home.relative_to(DATA_ROOT.parent)}")
    rows = 0
    header = ",".join(CANONICAL_FIELDS) + "\n"
    workers = max(1, min(2, os.cpu_count() or 1))
    with (
        ProcessPoolExecutor(max_workers=workers) as pool,
        csv_path.open("w", encoding="utf-8") as plain,
        gzip.open(gz_path, "wt", encoding="utf-8", compresslevel=6) as packed,
    ):
        plain.write(header)
        packed.write(header)
        chunks = pool.map(_day_csv, [INGEST_SEED] * len(days), days, [SESSIONS_PER_DAY] * len(days))
        for text, count in chunks:
            plain.write(text)
            packed.write(text)
            rows += count
    meta.write_text(json.dumps({"rows": rows}))
    return gz_path, csv_path, rows


# --- Pulse through the API ---------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the import workers sit under the forkserver)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                pending.append(child)
    return found


def worker_peaks(pid: int, seen: dict[int, int]) -> None:
    """Record each descendant's peak RSS (VmHWM) into ``seen`` (pid -> bytes)."""
    for child in descendants(pid):
        try:
            peak = proc_status(child).get("VmHWM", 0)
        except OSError:
            continue  # exited meanwhile
        seen[child] = max(seen.get(child, 0), peak)


def _client(server: Server, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


def create_tenant(server: Server, operator_token: str, tenant_id: str) -> None:
    with _client(server, operator_token) as client:
        response = client.post("/api/v1/tenants", json={"id": tenant_id, "name": tenant_id})
        if response.status_code not in (200, 201, 409):
            raise RuntimeError(f"create tenant: {response.status_code} {response.text[:300]}")


def start_run(
    server: Server, token: str, tenant_id: str, source: dict[str, Any], run: dict[str, Any]
) -> str:
    with _client(server, token) as client:
        response = client.post(f"/api/v1/tenants/{tenant_id}/sources", json=source)
        if response.status_code != 201:
            raise RuntimeError(f"create source: {response.status_code} {response.text[:300]}")
        source_id = response.json()["id"]
        response = client.post(f"/api/v1/tenants/{tenant_id}/sources/{source_id}/runs", json=run)
        if response.status_code != 202:
            raise RuntimeError(f"create run: {response.status_code} {response.text[:300]}")
        run_id: str = response.json()["id"]
        return run_id


def run_seconds(run: dict[str, Any]) -> float:
    started = datetime.fromisoformat(run["started_at"])
    finished = datetime.fromisoformat(run["finished_at"])
    return (finished - started).total_seconds()


def sftp_source(endpoint: DevSftp, remote_dir: str) -> dict[str, Any]:
    return {
        "kind": "sftp",
        "name": f"bench {remote_dir}",
        "config": {
            "host": endpoint.host,
            "port": endpoint.port,
            "username": endpoint.username,
            "host_key": endpoint.host_key_fingerprint,
            "remote_dir": remote_dir,
            "pattern": "*.csv.gz",
            "settle_s": 0,
        },
        "secrets": {"password": endpoint.password},
    }


def synthetic_source(days: Sequence[date]) -> tuple[dict[str, Any], dict[str, Any]]:
    source = {
        "kind": "synthetic",
        "name": "bench synthetic import",
        "config": {
            "seed": INGEST_SEED,
            "sessions_per_day": SESSIONS_PER_DAY,
            "batch_rows": 50_000,
        },
    }
    run = {"trigger": "backfill", "start": str(days[0]), "end": str(days[-1])}
    return source, run


def sftp_available() -> bool:
    from app.modules.ingestion.connectors import get_connector

    return get_connector("sftp") is not None


def import_once(
    dataset: Dataset,
    issuer: Issuer,
    tenant_id: str,
    gz_path: Path,
    days: Sequence[date],
    use_sftp: bool,
    log: Callable[[str], None],
    rows_hint: int,
    *,
    seeded: bool = False,
) -> dict[str, Any]:
    """One import into a new tenant by a fresh Pulse process; rows/s and peak RSS.

    ``seeded``: before the import, the tenant gets one day of events (COPYed directly)
    and the events table is analysed, so the planner knows the tenant.
    Without it the import is a new customer's first one.
    """
    sftp_root = DATA_ROOT / "sftp"
    remote_dir = tenant_id
    (sftp_root / remote_dir).mkdir(parents=True, exist_ok=True)
    target = sftp_root / remote_dir / gz_path.name
    if target.exists():  # a directory left by an earlier run may hold another file
        target.unlink()
    os.link(gz_path, target)
    # The development SFTP server (asyncssh on its own thread and loop), password auth.
    host_key = DATA_ROOT / "ssh_host_ed25519_key"
    password = secrets.token_urlsafe(12)
    server_sftp = DevSftpThread(sftp_root, host_key, "bench", password) if use_sftp else None
    endpoint = server_sftp.start() if server_sftp else None
    operator = issuer.token([tenant_id], role="operator")
    admin = issuer.token([tenant_id], role="admin")
    try:
        with pulse(
            dataset, issuer, name=f"pulse-ingest-{tenant_id}", PULSE_LOOP_LAG_WARN_MS="25"
        ) as server:
            idle = server.memory()
            create_tenant(server, operator, tenant_id)
            if seeded:
                asyncio.run(seed_tenant(dataset, tenant_id, days[0] - timedelta(days=30)))
            if use_sftp:
                source, run_body = sftp_source(endpoint, remote_dir), {"trigger": "manual"}
            else:
                source, run_body = synthetic_source(days)
            lag_before = scrape_lag(server.url)
            # Only what the loop logged while the file imported (start-up's heap freeze
            # logs a lag of its own before).
            run_started = datetime.now(UTC).isoformat()
            run_id = start_run(server, admin, tenant_id, source, run_body)
            peak_rss = 0
            workers: dict[int, int] = {}
            # A slow engine is a finding, not a reason to wait for ever.
            limit_s = 60 + rows_hint / 4000
            deadline = time.monotonic() + limit_s
            run: dict[str, Any] = {}
            with _client(server, admin) as client:
                while time.monotonic() < deadline:
                    peak_rss = max(peak_rss, server.memory().get("VmRSS", 0))
                    worker_peaks(server.pid, workers)
                    run = client.get(f"/api/v1/tenants/{tenant_id}/runs/{run_id}").json()
                    if run.get("status") in FINAL:
                        break
                    if server.log_events("run.error"):
                        # An attempt failed: whatever the retries do, this is no longer a
                        # throughput measurement.
                        break
                    time.sleep(0.25)
            finished = run.get("status") in FINAL
            errors = sorted({str(r.get("error")) for r in server.log_events("run.error")})
            memory = server.memory()
            # The event loop while the file imports (the issue: parsing must not starve it).
            loop_lag = lag_between(lag_before, scrape_lag(server.url))
            logged = [
                float(str(r["lag_ms"]))
                for r in server.log_events("loop.lag")
                if str(r.get("timestamp", "")).replace("Z", "+00:00") >= run_started
            ]
            loop_lag["max_logged_ms"] = max(logged) if logged else None
    finally:
        if server_sftp is not None:
            server_sftp.stop()
    progress = run["progress"]
    if finished:
        seconds = run_seconds(run)
    elif run.get("started_at"):
        seconds = (datetime.now(UTC) - datetime.fromisoformat(run["started_at"])).total_seconds()
    else:
        seconds = limit_s
    loaded = int(progress["rows_loaded"])
    if finished:
        status = run["status"]
    elif errors:
        status = f"attempt {run.get('attempt')} failed ({', '.join(errors)}); stopped waiting"
    else:
        status = f"unfinished after {limit_s:.0f} s"
    result = {
        "source": "sftp" if use_sftp else "synthetic",
        "variant": "tenant with planner statistics" if seeded else "new tenant (first import)",
        "status": status,
        "error": run.get("error"),
        "attempt": run.get("attempt"),
        "logged_errors": errors,
        "rows_loaded": loaded,
        "rows_read": progress["rows_read"],
        "rows_rejected": progress["rows_rejected"],
        "seconds": round(seconds, 2),
        "rows_per_s": round(loaded / seconds, 1) if seconds > 0 else None,
        "rss_idle_bytes": idle.get("VmRSS"),
        "rss_peak_bytes": max(memory.get("VmHWM", 0), peak_rss),
        # The import worker processes (and the forkserver), each: pid -> peak RSS.
        "worker_rss_peak_bytes": max(workers.values(), default=None),
        "worker_rss_peaks": sorted(workers.values(), reverse=True),
        "loop_lag": loop_lag,
    }
    log(
        f"  engine ({result['source']}): {loaded:,} rows in {seconds:.1f}s ="
        f" {result['rows_per_s']} rows/s, peak RSS {result['rss_peak_bytes'] / 2**20:.0f} MiB"
        f" (workers {(result['worker_rss_peak_bytes'] or 0) / 2**20:.0f} MiB each at most),"
        f" loop lag p99<={loop_lag['p99_le_ms']} ms max {loop_lag['max_logged_ms']} ms,"
        f" status {status}"
    )
    return result


# --- the COPY baseline -------------------------------------------------------------------


async def copy_baseline(dataset: Dataset, csv_path: Path, tenant_id: str) -> dict[str, Any]:
    import asyncpg

    from app.modules.events import CANONICAL_FIELDS

    columns = ", ".join(f'"{c}"' for c in CANONICAL_FIELDS)
    conn = await asyncpg.connect(dataset.asyncpg_dsn, timeout=30)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {BASELINE_TABLE}")
        await conn.execute(f"CREATE TABLE {BASELINE_TABLE} (LIKE events INCLUDING ALL)")
        await conn.execute("CHECKPOINT")
        started = time.perf_counter()
        async with conn.transaction():
            await conn.execute(
                f"CREATE TEMP TABLE bench_staging ON COMMIT DROP AS"
                f" SELECT {columns} FROM events WITH NO DATA"
            )
            await conn.copy_to_table(
                "bench_staging",
                source=str(csv_path),
                columns=list(CANONICAL_FIELDS),
                format="csv",
                header=True,
            )
            merged = await conn.fetchrow(
                f"""
                WITH inserted AS (
                    INSERT INTO {BASELINE_TABLE} (tenant_id, {columns}, source_id)
                    SELECT $1, {columns}, NULL FROM bench_staging
                    ON CONFLICT (tenant_id, event_id) DO NOTHING
                    RETURNING occurred_at
                )
                SELECT count(*) AS inserted,
                       array_agg(DISTINCT (occurred_at AT TIME ZONE 'UTC')::date) AS days,
                       max(occurred_at) AS newest
                FROM inserted
                """,
                tenant_id,
            )
        seconds = time.perf_counter() - started
        await conn.execute(f"DROP TABLE {BASELINE_TABLE}")
    finally:
        await conn.close()
    rows = int(merged["inserted"])
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1)}


async def seed_tenant(dataset: Dataset, tenant_id: str, day: date) -> None:
    """Give the planner statistics for a new tenant: one day of its events COPYed straight
    into ``events`` (no rollups: going through ``load_events`` hits the very plan this
    works around), then ``ANALYZE events``."""
    import asyncpg

    from app.modules.events import to_canonical
    from app.modules.events.schema import LOAD_COLUMNS
    from app.modules.ingestion.connectors.synthetic import iter_day_events

    records = []
    for row in iter_day_events(INGEST_SEED + 1, day, 2_000):
        event = to_canonical(row)
        values = [getattr(event, name) for name in LOAD_COLUMNS[1:-1]]
        values[-1] = json.dumps(values[-1])  # properties -> jsonb text
        records.append((tenant_id, *values, None))
    conn = await asyncpg.connect(dataset.asyncpg_dsn, timeout=30)
    try:
        await conn.copy_records_to_table("events", records=records, columns=list(LOAD_COLUMNS))
        await conn.execute("ANALYZE events")
    finally:
        await conn.close()


async def drop_tenants(dataset: Dataset, prefix: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dataset.asyncpg_dsn, timeout=30)
    try:
        await conn.execute("DELETE FROM tenants WHERE id LIKE $1", prefix + "%")
        await conn.execute("VACUUM ANALYZE events")
    finally:
        await conn.close()


def run(dataset: Dataset, issuer: Issuer, profile: Profile, log: Callable[[str], None]) -> Any:
    today = datetime.now(UTC).date()
    use_sftp = sftp_available()
    if not use_sftp:
        log("  the sftp connector is not in this build: importing the synthetic source instead")
    days = plan_days(profile.ingest_rows, today)
    gz_path, csv_path, rows = build_files(days, log)
    asyncio.run(drop_tenants(dataset, "bench-ingest"))
    out: dict[str, Any] = {
        "file_rows": rows,
        "file_bytes_gz": gz_path.stat().st_size,
        "file_bytes_csv": csv_path.stat().st_size,
        "sftp_connector": use_sftp,
        "engine_runs": [],
        "baseline_runs": [],
    }
    try:
        for attempt in range(profile.ingest_runs):
            for seeded in (False, True):
                tenant = f"bench-ingest-{'s' if seeded else 'n'}{attempt}"
                result = import_once(
                    dataset, issuer, tenant, gz_path, days, use_sftp, log, rows, seeded=seeded
                )
                result["round"] = attempt
                out["engine_runs"].append(result)
                asyncio.run(drop_tenants(dataset, tenant))
            baseline = asyncio.run(copy_baseline(dataset, csv_path, "bench-ingest-copy"))
            log(
                f"  COPY baseline: {baseline['rows']:,} rows in {baseline['seconds']}s ="
                f" {baseline['rows_per_s']} rows/s"
            )
            out["baseline_runs"].append(baseline)
        if profile.rss_check_rows:
            big_days = plan_days(profile.rss_check_rows, today)
            big_gz, _, big_rows = build_files(big_days, log)
            out["rss_check"] = {
                "file_rows": big_rows,
                **import_once(
                    dataset,
                    issuer,
                    "bench-ingest-big",
                    big_gz,
                    big_days,
                    use_sftp,
                    log,
                    big_rows,
                    seeded=True,
                ),
            }
    finally:
        asyncio.run(drop_tenants(dataset, "bench-ingest"))
    return out
