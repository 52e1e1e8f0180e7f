"""`python -m app dev`: Pulse plus its whole world on loopback, with demo data flowing.

Starts (development only): the embedded PostgreSQL and the development OIDC issuer
(both inside the app), an SFTP server with generated GA4-like files, the BigQuery
emulator when its packages are installed, the SMTP catcher (inside the app), then
Pulse itself. It creates the tenants ``demo`` and ``acme`` with their sources through
Pulse's own API, triggers the first imports and prints tokens and example commands (the
banner, also written to ``.data/banner.txt``).

Running it again reuses ``.data/``: the SFTP server and the BigQuery emulator keep their
ports (``.data/dev/ports.json``), host key and data, and the bootstrap only creates what is
missing - it never rewrites a setting an admin changed. Scheduling waits for the bootstrap.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
# The connection fields the launcher owns in its sources' configs (everything else is the
# admin's to change).
WORLD_FIELDS = ("host", "port", "host_key", "api_endpoint")
BANNER_FILE = "banner.txt"
# Twice the dashboard's default range (30 days compared with the 30 before), so the
# default comparison is between two full periods.
DEMO_DAYS = 60
DEMO_BIGQUERY_DAYS = 60


@dataclass
class World:
    """What the launcher started; handed to the bootstrap and torn down at the end."""

    scale: float = 1.0
    sftp: DevSftp | None = None
    bigquery: DevBigQuery | None = None
    # Filling the emulator's missing days, in a worker thread: the banner does not wait.
    bigquery_seeding: asyncio.Task[None] | None = None
    # First imports that must wait for the seeding: (tenant id, source id, run body).
    deferred_runs: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
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
        "config": {"seed": seed, "sessions_per_day": sessions_per_day, "days_back": DEMO_DAYS},
        "schedule": {"interval_s": 600},
    }


def read_ports(path: Path) -> dict[str, int]:
    """The ports the world listened on last time (blocking; empty when unknown)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, int)}


def write_ports(path: Path, ports: dict[str, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(ports, indent=2, sort_keys=True) + "\n")
    partial.replace(path)


@contextlib.asynccontextmanager
async def start_world(settings: Settings, scale: float) -> AsyncIterator[World]:
    world = World(scale=scale)
    dev_dir = settings.data_path / "dev"
    drop = dev_dir / "sftp" / "drop"
    ports_file = dev_dir / "ports.json"
    ports = await asyncio.to_thread(read_ports, ports_file)
    # The drop files are written while the emulator (a child process) starts up.
    files = asyncio.create_task(
        asyncio.to_thread(
            write_drop_files, drop, seed=7, sessions_per_day=_scaled(150, scale), days=DEMO_DAYS
        ),
        name="dev-drop-files",
    )
    sftp_thread = DevSftpThread(
        dev_dir / "sftp", dev_dir / "ssh_host_ed25519_key", DEMO_SFTP_USER, DEMO_SFTP_PASSWORD
    )
    world.sftp = await asyncio.to_thread(sftp_thread.start, ports.get("sftp", 0))
    ports["sftp"] = world.sftp.port
    log.info("dev.sftp_started", port=world.sftp.port)
    emulator = DevBigQueryProcess(
        dev_dir / "bigquery" / "emulator.log", data_dir=dev_dir / "bigquery" / "data"
    )
    try:
        if dev_bigquery.available():
            try:
                world.bigquery = await asyncio.to_thread(
                    functools.partial(
                        emulator.start,
                        rest_port=ports.get("bigquery_rest", 0),
                        grpc_port=ports.get("bigquery_grpc", 0),
                    )
                )
                ports["bigquery_rest"] = world.bigquery.rest_port
                ports["bigquery_grpc"] = world.bigquery.grpc_port
                log.info("dev.bigquery_started", endpoint=world.bigquery.endpoint)
                world.bigquery_seeding = asyncio.create_task(
                    asyncio.to_thread(
                        functools.partial(
                            emulator.seed,
                            world.bigquery,
                            seed=5,
                            sessions_per_day=_scaled(80, scale),
                            days=DEMO_BIGQUERY_DAYS,
                        )
                    ),
                    name="dev-bigquery-seed",
                )
            except (RuntimeError, OSError) as exc:
                log.error("dev.bigquery_failed", error=str(exc))
                world.notes.append(f"! BigQuery emulator did not start: {exc}")
        else:
            world.notes.append("(BigQuery emulator not installed: the BigQuery source is skipped)")
        written = await files
        log.info("dev.files_ready", directory=str(drop), new_files=len(written))
        await asyncio.to_thread(write_ports, ports_file, ports)
        yield world
    finally:
        # Stopping the emulator ends a seeding still in progress (its calls fail).
        await asyncio.to_thread(emulator.stop)
        await asyncio.gather(files, return_exceptions=True)
        seeding = world.bigquery_seeding
        if seeding is not None:
            await asyncio.wait({seeding}, timeout=30)
            if seeding.done() and not seeding.cancelled() and seeding.exception() is not None:
                log.info("dev.bigquery_seed_interrupted", error=str(seeding.exception()))
        await asyncio.to_thread(sftp_thread.stop)


async def _ensure_tenant(api: httpx.AsyncClient, tenant: dict[str, Any]) -> bool:
    """Create the tenant unless it exists; True when it was created now."""
    response = await api.post("/api/v1/tenants", json=tenant)
    if response.status_code not in (201, 409):
        response.raise_for_status()
    return response.status_code == 201


def first_run(source: dict[str, Any]) -> dict[str, Any]:
    """The first import of a new source: BigQuery's default window is a few days (its
    reload window), so the demo's whole history comes as a backfill."""
    if source["kind"] != "bigquery_ga4":
        return {}
    today = datetime.now(UTC).date()
    return {
        "trigger": "backfill",
        "start": (today - timedelta(days=DEMO_BIGQUERY_DAYS)).isoformat(),
        "end": (today - timedelta(days=1)).isoformat(),
    }


def _world_changes(existing: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The full config to PATCH when the world moved (a new port or endpoint), else None.

    Only the launcher's own connection fields are compared and replaced; whatever else an
    admin changed in the config stays (PATCH replaces ``config`` as a whole, so the rest
    is sent back as it is).
    """
    current = existing.get("config") or {}
    moved = {
        k: wanted["config"][k]
        for k in WORLD_FIELDS
        if k in wanted["config"] and current.get(k) != wanted["config"][k]
    }
    return {**current, **moved} if moved else None


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
            config = _world_changes(existing, source)
            if config is not None:
                update = {"config": config, **({"secrets": source["secrets"]}
                                               if "secrets" in source else {})}  # fmt: skip
                (await api.patch(f"/api/v1/tenants/{tenant_id}/sources/{existing['id']}",
                                 json=update)).raise_for_status()  # fmt: skip
                log.info("dev.source_moved", tenant_id=tenant_id, source=source["name"])
            return str(existing["id"]), False
    created = await api.post(f"/api/v1/tenants/{tenant_id}/sources", json=source)
    created.raise_for_status()
    return str(created.json()["id"]), True


async def bootstrap(api: httpx.AsyncClient, world: World) -> None:
    """Create what is missing of the demo tenants and sources through Pulse's own API.

    Existing tenants, sources and notification settings are left as they are (an admin
    may have changed them); only a source's connection to the development world is
    updated when that moved.
    """
    created = {
        "demo": await _ensure_tenant(
            api, {"id": "demo", "name": "Demo Shop", "timezone": "Europe/Berlin"}
        ),
        "acme": await _ensure_tenant(
            api, {"id": "acme", "name": "Acme Inc", "timezone": "America/New_York"}
        ),
    }
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
            source_id, new = await _ensure_source(api, tenant_id, source)
            if new and source["kind"] == "bigquery_ga4" and world.bigquery_seeding is not None:
                world.deferred_runs.append((tenant_id, source_id, first_run(source)))
            elif new:
                run = await api.post(
                    f"/api/v1/tenants/{tenant_id}/sources/{source_id}/runs",
                    json=first_run(source),
                )
                run.raise_for_status()
        except httpx.HTTPStatusError as exc:
            detail = exc.response.text[:300]
            log.error("dev.source_failed", tenant_id=tenant_id, source=source["name"],
                      status=exc.response.status_code, detail=detail)  # fmt: skip
            world.notes.append(f"! could not set up {source['name']!r} for {tenant_id}: {detail}")
    for tenant_id, new in created.items():
        if not new:
            continue  # the tenant's admins own its notification settings from now on
        answer = await api.put(
            f"/api/v1/tenants/{tenant_id}/notifications",
            json={"recipients": [f"admin@{tenant_id}.example"]},
        )
        if answer.status_code != 200:
            world.notes.append(f"! notification settings of {tenant_id}: {answer.text[:300]}")


@dataclass(frozen=True)
class Endpoints:
    """Where the running world can be reached, for the banner."""

    base: str
    mail_port: int | None


def _world_lines(endpoints: Endpoints, world: World) -> list[str]:
    base = endpoints.base
    lines = [
        f"  Dashboard:         {base}/",
        f"  OpenAPI UI:        {base}/schema  (Authorize: OIDC signs in like the dashboard)",
        "  Sign in:           the development picker: any user name, tenants demo and/or"
        " acme, a role",
    ]
    if endpoints.mail_port is not None:
        lines.append(
            f"  Caught emails:     {base}/dev/mail  (SMTP catcher on 127.0.0.1:"
            f"{endpoints.mail_port})"
        )
    if world.sftp is not None:
        sftp = world.sftp
        lines += [
            f"  SFTP drop:         sftp -P {sftp.port} {sftp.username}@{sftp.host}"
            f"  (password {sftp.password}; /drop/csv, /drop/jsonl)",
            f"                     host key {sftp.host_key_fingerprint}",
        ]
    if world.bigquery is not None:
        bq = world.bigquery
        lines.append(
            f"  BigQuery emulator: {bq.endpoint}  (project {bq.project}, dataset {bq.dataset})"
        )
    return lines


def banner(endpoints: Endpoints, admin_token: str, viewer_token: str, world: World) -> str:
    base = endpoints.base
    lines = [
        "",
        "Pulse is running (development).",
        *_world_lines(endpoints, world),
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
        "This banner is also in .data/banner.txt (PULSE_DATA_DIR). Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def write_banner(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(path)


async def finish_seeding(api: httpx.AsyncClient, world: World) -> None:
    """After the banner: wait for the BigQuery emulator's data, then start the imports that
    needed it. Failures are reported, never raised (the rest of the world keeps running)."""
    if world.bigquery_seeding is not None:
        try:
            await world.bigquery_seeding
            log.info("dev.bigquery_seeded")
        except Exception as exc:  # the emulator's client raises many kinds
            log.error("dev.bigquery_seed_failed", error=str(exc))
            return
    for tenant_id, source_id, body in world.deferred_runs:
        answer = await api.post(f"/api/v1/tenants/{tenant_id}/sources/{source_id}/runs", json=body)
        if answer.status_code != 202:
            log.error("dev.first_run_failed", source_id=source_id, detail=answer.text[:300])


async def run_dev(settings: Settings, scale: float = 1.0) -> int:
    """Start the world, then Pulse, bootstrap the demo and serve until Ctrl-C."""
    from app.core.logging import configure_logging
    from app.dev.issuer import DevIssuer

    configure_logging(settings)
    async with start_world(settings, scale) as world:
        app = create_app(settings)
        # The scheduler waits for this: its first tick must see the bootstrapped sources
        # and the emulator's data.
        scheduling_gate = asyncio.Event()
        app.state.scheduling_gate = scheduling_gate
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
        operator = issuer.mint(tenants=[], role="operator", subject="dev-launcher", ttl_s=3600)
        base = f"http://{settings.host}:{settings.port}"
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {operator}"}, timeout=30
        ) as api:
            seeding: asyncio.Task[None] | None = None
            try:
                await bootstrap(api, world)
                if world.bigquery_seeding is not None and not world.bigquery_seeding.done():
                    world.notes.append(
                        "(the BigQuery emulator is still being filled with demo data; its"
                        " first import starts when that is done)"
                    )
                admin = issuer.mint(tenants=["demo"], role="admin", subject="demo-admin")
                viewer = issuer.mint(tenants=["acme"], role="viewer", subject="acme-viewer")
                catcher = getattr(app.state, "mail_catcher", None)
                endpoints = Endpoints(
                    base=base, mail_port=catcher.port if catcher is not None else None
                )
                text = banner(endpoints, admin, viewer, world)
                await asyncio.to_thread(write_banner, settings.data_path / BANNER_FILE, text)
                await asyncio.to_thread(print, text, flush=True)
                seeding = asyncio.create_task(finish_seeding(api, world), name="dev-seeding")
                await asyncio.wait({seeding, serving}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                scheduling_gate.set()
            if seeding is not None and not seeding.done():  # Ctrl-C while still filling
                seeding.cancel()
                await asyncio.gather(seeding, return_exceptions=True)
        await serving
    return 0
