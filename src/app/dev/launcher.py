"""`python -m app dev`: Pulse plus its whole world on loopback, with demo data flowing.

Starts (development only): the embedded PostgreSQL and the development OIDC issuer
(both inside the app), an SFTP server with generated GA4-like files, the BigQuery
emulator when its packages are installed, the SMTP catcher (inside the app), then
Pulse itself. It creates the tenants ``demo`` and ``acme`` with their sources through
Pulse's own API, triggers the first imports and prints tokens and example commands.
Running it again reuses ``.data/`` and creates nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from app.core.serving import build_server
from app.core.settings import Settings
from app.dev import bigquery as dev_bigquery
from app.dev.bigquery import DevBigQuery, DevBigQueryProcess
from app.dev.files import write_drop_files
from app.dev.sftp import DevSftp, DevSftpThread
from app.main import create_app

log = structlog.get_logger("app.dev")

DEMO_SFTP_USER = "demo"
DEMO_SFTP_PASSWORD = "demo-sftp-password"  # noqa: S105 - loopback-only development server


@dataclass
class World:
    """What the launcher started; handed to the bootstrap and torn down at the end."""

    scale: float = 1.0
    sftp: DevSftp | None = None
    bigquery: DevBigQuery | None = None
    notes: list[str] = field(default_factory=list)


def sftp_source(sftp: DevSftp, file_format: str) -> dict[str, Any]:
    return {
        "kind": "sftp",
        "name": f"Web events (SFTP {file_format.upper()} drop)",
        "config": {
            "host": sftp.host,
            "port": sftp.port,
            "username": sftp.username,
            "host_key": sftp.host_key_fingerprint,
            "remote_dir": f"/drop/{file_format}",
            "pattern": f"events_*.{file_format}*",
            "format": file_format,
            "settle_s": 0,
        },
        "secrets": {"password": sftp.password},
        "schedule": {"interval_s": 300},
    }


def _scaled(sessions_per_day: int, scale: float) -> int:
    return max(1, round(sessions_per_day * scale))


def synthetic_source(name: str, seed: int, sessions_per_day: int) -> dict[str, Any]:
    return {
        "kind": "synthetic",
        "name": name,
        "config": {"seed": seed, "sessions_per_day": sessions_per_day, "days_back": 30},
        "schedule": {"interval_s": 600},
    }


@contextlib.asynccontextmanager
async def start_world(settings: Settings, scale: float) -> AsyncIterator[World]:
    world = World(scale=scale)
    dev_dir = settings.data_path / "dev"
    drop = dev_dir / "sftp" / "drop"
    written = await asyncio.to_thread(
        write_drop_files, drop, seed=7, sessions_per_day=_scaled(150, scale), days=30
    )
    log.info("dev.files_ready", directory=str(drop), new_files=len(written))
    sftp_thread = DevSftpThread(
        dev_dir / "sftp", dev_dir / "ssh_host_ed25519_key", DEMO_SFTP_USER, DEMO_SFTP_PASSWORD
    )
    world.sftp = await asyncio.to_thread(sftp_thread.start)
    log.info("dev.sftp_started", port=world.sftp.port)
    emulator = DevBigQueryProcess(dev_dir / "bigquery" / "emulator.log")
    try:
        if dev_bigquery.available():
            try:
                world.bigquery = await asyncio.to_thread(
                    emulator.start, seed=5, sessions_per_day=_scaled(80, scale), days=14
                )
                log.info("dev.bigquery_started", endpoint=world.bigquery.endpoint)
            except (RuntimeError, OSError) as exc:
                log.error("dev.bigquery_failed", error=str(exc))
                world.notes.append(f"! BigQuery emulator did not start: {exc}")
        else:
            world.notes.append("(BigQuery emulator not installed: the BigQuery source is skipped)")
        yield world
    finally:
        await asyncio.to_thread(emulator.stop)
        await asyncio.to_thread(sftp_thread.stop)


async def _ensure_tenant(api: httpx.AsyncClient, tenant: dict[str, Any]) -> None:
    response = await api.post("/api/v1/tenants", json=tenant)
    if response.status_code not in (201, 409):
        response.raise_for_status()


async def _ensure_source(
    api: httpx.AsyncClient, tenant_id: str, source: dict[str, Any]
) -> tuple[str, bool]:
    """The source's id, and whether it was created now (so it needs a first run)."""
    listing = await api.get(f"/api/v1/tenants/{tenant_id}/sources")
    listing.raise_for_status()
    body = listing.json()
    items = body.get("items", body) if isinstance(body, dict) else body
    for existing in items:
        if existing["name"] == source["name"]:
            update = {k: source[k] for k in ("config", "secrets", "schedule") if k in source}
            (await api.patch(f"/api/v1/tenants/{tenant_id}/sources/{existing['id']}",
                             json=update)).raise_for_status()  # fmt: skip
            return str(existing["id"]), False
    created = await api.post(f"/api/v1/tenants/{tenant_id}/sources", json=source)
    created.raise_for_status()
    return str(created.json()["id"]), True


async def bootstrap(api: httpx.AsyncClient, world: World) -> None:
    """Create (or reuse) the demo tenants and sources through Pulse's own API."""
    await _ensure_tenant(api, {"id": "demo", "name": "Demo Shop", "timezone": "Europe/Berlin"})
    await _ensure_tenant(api, {"id": "acme", "name": "Acme Inc", "timezone": "America/New_York"})
    demo_sources = [synthetic_source("App events (synthetic)", 3, _scaled(120, world.scale))]
    if world.sftp is not None:
        demo_sources[:0] = [sftp_source(world.sftp, "csv"), sftp_source(world.sftp, "jsonl")]
    if world.bigquery is not None:
        demo_sources.insert(1, dev_bigquery.bigquery_source(world.bigquery))
    plan = [("demo", s) for s in demo_sources] + [
        ("acme", synthetic_source("Acme web (synthetic)", 11, _scaled(60, world.scale)))
    ]
    for tenant_id, source in plan:
        try:
            source_id, created = await _ensure_source(api, tenant_id, source)
            if created:
                run = await api.post(
                    f"/api/v1/tenants/{tenant_id}/sources/{source_id}/runs", json={}
                )
                run.raise_for_status()
        except httpx.HTTPStatusError as exc:
            detail = exc.response.text[:300]
            log.error("dev.source_failed", tenant_id=tenant_id, source=source["name"],
                      status=exc.response.status_code, detail=detail)  # fmt: skip
            world.notes.append(f"! could not set up {source['name']!r} for {tenant_id}: {detail}")
    for tenant_id in ("demo", "acme"):
        await api.put(
            f"/api/v1/tenants/{tenant_id}/notifications",
            json={"recipients": [f"admin@{tenant_id}.example"]},
        )


def banner(base: str, admin_token: str, viewer_token: str, world: World) -> str:
    lines = [
        "",
        "Pulse is running (development).",
        f"  OpenAPI UI:        {base}/schema",
        f"  Dashboard:         {base}/",
        "",
        "demo admin token:",
        admin_token,
        "",
        "acme viewer token:",
        viewer_token,
        "",
        "Try:",
        f'  curl -s -H "Authorization: Bearer $TOKEN" "{base}/api/v1/tenants/demo/stats/summary'
        '?date_range=30d"',
        f'  curl -s -H "Authorization: Bearer $TOKEN" "{base}/api/v1/tenants/demo/stats/breakdown'
        '?dimension=page_path&metrics=users,pageviews&limit=10&date_range=30d"',
        f'  curl -s -H "Authorization: Bearer $TOKEN" "{base}/api/v1/tenants/demo/runs"',
        "(TOKEN=<the demo admin token above>; a new one: make token TENANT=demo ROLE=admin)",
        *world.notes,
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


async def run_dev(settings: Settings, scale: float = 1.0) -> int:
    """Start the world, then Pulse, bootstrap the demo and serve until Ctrl-C."""
    from app.core.logging import configure_logging
    from app.modules.auth.dev_issuer import DevIssuer

    configure_logging(settings)
    async with start_world(settings, scale) as world:
        app = create_app(settings)
        # The launcher's own loop (uvloop) is already running: uvicorn must not make one.
        server = build_server(app, settings.host, settings.port, loop="none")
        # Bind the HTTP port before the app starts: otherwise a service started in the
        # lifespan on a random port (the SMTP catcher) can take it first.
        listener = socket.create_server((settings.host, settings.port), reuse_port=False)
        serving = asyncio.create_task(server.serve(sockets=[listener]), name="uvicorn")
        while not server.started:
            if serving.done():
                return 1
            await asyncio.sleep(0.05)
        issuer = await asyncio.to_thread(DevIssuer.from_settings, settings)
        operator = issuer.mint(tenants=[], role="operator", subject="dev-launcher", ttl_s=600)
        base = f"http://{settings.host}:{settings.port}"
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {operator}"}, timeout=30
        ) as api:
            await bootstrap(api, world)
        admin = issuer.mint(tenants=["demo"], role="admin", subject="demo-admin")
        viewer = issuer.mint(tenants=["acme"], role="viewer", subject="acme-viewer")
        await asyncio.to_thread(print, banner(base, admin, viewer, world), flush=True)
        await serving
    return 0
