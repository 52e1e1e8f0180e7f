"""The benchmark's own embedded PostgreSQL, migrated and filled with synthetic events.

Events come from the ``synthetic`` source's generator and go through the event store's
``load_events`` (COPY, merge, hourly rollups, data version), exactly as an import would
write them. Building 10M events takes a while, so the filled database is kept under
``bench/.data/<profile>/`` and reused while the profile and the code that shaped it (the
generator, the event store, the migrations) are unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.profiles import Profile

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = ROOT / "bench" / ".data"
MAIN_TENANT = "bench-main"
SMALL_TENANT = "bench-small"
MAIN_SEED = 1000
SMALL_SEED = 900_000
# Files whose content decides what the generated database holds.
SHAPING_FILES = (
    "src/app/modules/ingestion/connectors/synthetic.py",
    "src/app/modules/events/schema.py",
    "src/app/modules/events/service.py",
    "src/app/modules/events/rollups.py",
    "src/app/modules/events/increments.py",
    "src/app/modules/events/sketches.py",
    "src/app/modules/events/definitions.py",
    "src/app/modules/events/models.py",
    "src/app/modules/events/state.py",
    "src/app/modules/events/grains.py",
)
# Bump when this module changes what it generates.
DATASET_FORMAT = 2
CHUNK_DAYS = 7


# The login role Pulse processes use (member of the migrations' group role pulse_app).
APP_ROLE = "pulse_bench_app"

DATA_FIELDS = ("days", "sessions_per_day", "small_sessions_per_day", "seed_block_days")


@dataclass(frozen=True)
class Dataset:
    url: str  # postgresql+asyncpg://... (Unix socket)
    socket_dir: str
    first_day: date
    last_day: date
    meta: dict[str, Any]
    server: Any  # pgserver handle: keeps PostgreSQL running while referenced

    @property
    def asyncpg_dsn(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.socket_dir}"

    @property
    def app_url(self) -> str:
        """What a Pulse process under test connects as: a login role that owns nothing,
        is no superuser and may not bypass row-level security, as in production (the
        README's database roles), so the policies' cost is in every figure."""
        return self.url.replace("://postgres@", f"://{APP_ROLE}@", 1)


def code_version(profile: Profile) -> str:
    shape = {k: v for k, v in profile.describe().items() if k in DATA_FIELDS}
    digest = hashlib.sha256(json.dumps([DATASET_FORMAT, shape], sort_keys=True).encode())
    for name in SHAPING_FILES:
        digest.update((ROOT / name).read_bytes())
    for path in sorted((ROOT / "alembic" / "versions").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def seed_for(base: int, day_index: int, block_days: int) -> int:
    return base + day_index // block_days


def _chunk_events(parts: list[tuple[int, date, int]]) -> list[Any]:
    """Worker process: the events of a few days, validated to canonical form."""
    from app.modules.events import to_canonical
    from app.modules.ingestion.connectors.synthetic import iter_day_events

    return [
        to_canonical(row)
        for seed, day, sessions in parts
        for row in iter_day_events(seed, day, sessions)
    ]


def _plan(profile: Profile, first: date) -> Iterator[tuple[str, list[tuple[int, date, int]]]]:
    """(tenant, [(seed, day, sessions), ...]) chunks of CHUNK_DAYS days, one load each."""
    tenants = [(MAIN_TENANT, MAIN_SEED, profile.sessions_per_day)]
    if profile.small_sessions_per_day:
        tenants.append((SMALL_TENANT, SMALL_SEED, profile.small_sessions_per_day))
    # The first chunk is one day: it gives the planner statistics before the big ones.
    starts = [0, *range(1, profile.days, CHUNK_DAYS)]
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else profile.days
        indexes = range(start, end)
        for tenant_id, base, sessions in tenants:
            yield (
                tenant_id,
                [
                    (
                        seed_for(base, i, profile.seed_block_days),
                        first + timedelta(days=i),
                        sessions,
                    )
                    for i in indexes
                ],
            )


async def _create_tenants(url: str) -> None:
    from app.core.db import Database
    from app.core.settings import Settings
    from app.modules.tenants.schemas import TenantCreate
    from app.modules.tenants.service import create_tenant

    db = Database.from_settings(Settings(env="test"), url)
    try:
        async with db.session(all_tenants=True) as session:
            for tenant_id, name in ((MAIN_TENANT, "Bench main"), (SMALL_TENANT, "Bench small")):
                await create_tenant(session, TenantCreate(id=tenant_id, name=name))
            await session.commit()
    finally:
        await db.dispose()


async def _fill(url: str, profile: Profile, first: date, log: Any) -> dict[str, Any]:
    from sqlalchemy import text

    from app.core.db import Database
    from app.core.settings import Settings
    from app.modules.events import compact_tenant_rollups, load_events

    db = Database.from_settings(Settings(env="test", db_statement_timeout_ms=3_600_000), url)
    loop = asyncio.get_running_loop()
    plan = list(_plan(profile, first))
    loaded = 0
    started = time.perf_counter()
    # Generation (CPU) in worker processes, a few chunks ahead of loading (PostgreSQL).
    # Several days per load: one rollup refresh per chunk instead of one per day.
    ahead = 3
    with ProcessPoolExecutor(max_workers=2) as pool:
        pending: deque[asyncio.Future[list[Any]]] = deque(
            loop.run_in_executor(pool, _chunk_events, parts) for _, parts in plan[:ahead]
        )
        for i, (tenant_id, parts) in enumerate(plan):
            events = await pending.popleft()
            if i + ahead < len(plan):
                pending.append(loop.run_in_executor(pool, _chunk_events, plan[i + ahead][1]))
            async with db.session(tenant_id) as session:
                result = await load_events(session, tenant_id, events, source_id=None)
                await session.commit()
            loaded += result.inserted
            if i < 6 or i % 6 == 0:
                # Fresh tables have no statistics: without them the rollup refresh's
                # session join is planned as a nested loop (quadratic in the chunk).
                async with db.engine.connect() as conn:
                    await conn.execute(text("ANALYZE events"))
                    await conn.commit()
            rate = loaded / max(time.perf_counter() - started, 1e-9)
            log(f"  data: {parts[-1][1]} {tenant_id} loaded={loaded:,} ({rate:,.0f} events/s)")

        # Week and month rows, as an import run derives them after it commits (issue #14).
        async def in_pool(fn: Any, *args: Any) -> Any:
            return await loop.run_in_executor(pool, fn, *args)

        for tenant_id in (MAIN_TENANT, SMALL_TENANT):
            began = time.perf_counter()
            periods = await compact_tenant_rollups(db, tenant_id, run=in_pool)
            log(f"  data: {tenant_id} weeks+months={periods} in {time.perf_counter() - began:.1f}s")
    async with db.engine.connect() as conn:
        counts = {}
        for tenant_id in (MAIN_TENANT, SMALL_TENANT):
            row = (
                await conn.execute(
                    text(
                        "SELECT count(*) AS events, count(DISTINCT user_id) AS users,"
                        " count(DISTINCT session_id) AS sessions FROM events WHERE tenant_id = :t"
                    ),
                    {"t": tenant_id},
                )
            ).one()
            counts[tenant_id] = {
                "events": row.events,
                "users": row.users,
                "sessions": row.sessions,
            }
        rollups = await conn.scalar(text("SELECT count(*) FROM stats_rollups"))
    async with db.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM ANALYZE"))
    await db.dispose()
    return {
        "tenants": counts,
        "rollup_rows": rollups,
        "load_seconds": round(time.perf_counter() - started, 1),
    }


def _stop_stale_server(data_dir: Path) -> None:
    """A server left running by an interrupted run must stop before its files go: ask the
    postmaster for a fast shutdown (SIGINT) and wait for it to exit."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGINT)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


async def _ensure_app_role(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_ROLE):
            await conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS")
        await conn.execute(f"GRANT pulse_app TO {APP_ROLE}")
    finally:
        await conn.close()


def prepare(profile: Profile, log: Any, *, rebuild: bool = False) -> Dataset:
    """Start the profile's PostgreSQL; build the data set unless a matching one is cached."""
    from app.core.embedded_pg import start_embedded_postgres
    from app.core.migrations import upgrade_to_head

    home = DATA_ROOT / profile.name
    meta_path = home / "dataset.json"
    version = code_version(profile)
    meta: dict[str, Any] | None = None
    if meta_path.exists() and not rebuild:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != version or not meta.get("complete"):
            log(f"cached database for {profile.name} is stale or incomplete: rebuilding")
            meta = None
    if meta is None and home.exists():
        _stop_stale_server(home / "postgres")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    url, server = start_embedded_postgres(home)
    socket_dir = server.get_postmaster_info().socket_dir
    if meta is None:
        log(f"building the {profile.name} data set (~{profile.approx_events:,} events)")
        upgrade_to_head(url)
        last = datetime.now(UTC).date() - timedelta(days=1)
        first = last - timedelta(days=profile.days - 1)
        asyncio.run(_create_tenants(url))
        stats = asyncio.run(_fill(url, profile, first, log))
        meta = {
            "version": version,
            "profile": profile.name,
            "first_day": first.isoformat(),
            "last_day": last.isoformat(),
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "complete": True,
            **stats,
        }
        meta_path.write_text(json.dumps(meta, indent=2))
    else:
        log(f"reusing the cached {profile.name} data set built {meta['built_at']}")
        upgrade_to_head(url)
    asyncio.run(_ensure_app_role(url))
    return Dataset(
        url=url,
        socket_dir=socket_dir,
        first_day=date.fromisoformat(meta["first_day"]),
        last_day=date.fromisoformat(meta["last_day"]),
        meta=meta,
        server=server,
    )
