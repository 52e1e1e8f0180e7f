"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import structlog
from litestar import Controller, Response, get
from litestar.datastructures import State

from app.core.db import Database, retry_if_connection_died
from app.core.errors import PROBLEM_JSON, error_responses, is_database_unavailable
from app.core.migrations import current_revisions

log = structlog.get_logger("app.health")


class Liveness(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    checks: dict[str, str]


async def check_database(state: State) -> list[str]:
    """Reasons the database is not ready; empty when it is reachable and at the head."""
    db: Database | None = getattr(state, "db", None)
    if db is None:
        return ["database: not configured yet"]
    try:
        async with asyncio.timeout(state.settings.readiness_timeout_s):
            revisions = await _revisions(db)
    except TimeoutError:
        return ["database: no answer within the readiness timeout"]
    except Exception as exc:
        # OSError: nothing listens where the database should be (a refused TCP port, a
        # missing Unix socket while PostgreSQL restarts).
        if is_database_unavailable(exc) or isinstance(exc, OSError):
            log.warning("health.database_unreachable", error=str(exc))
        else:
            log.exception("health.database_check_failed")
        return [f"database: unreachable ({type(exc).__name__})"]
    head: frozenset[str] = state.migration_head
    if revisions != head:
        return [
            f"database: schema at {sorted(revisions) or 'nothing'}, expected {sorted(head)};"
            " run `make migrate` (in the image: `python -m app migrate`)"
        ]
    return []


async def _revisions(db: Database) -> frozenset[str]:
    """The schema's revisions; retried once if the pooled connection died with a
    database restart (see :func:`app.core.db.retry_if_connection_died`)."""

    async def attempt() -> frozenset[str]:
        async with db.engine.connect() as conn:
            return await current_revisions(conn)

    return await retry_if_connection_died(attempt)


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]
    opt = {"public": True}

    @get("/live", operation_id="getLiveness", summary="The process is up")
    async def live(self) -> Liveness:
        return Liveness(status="ok")

    @get(
        "/ready",
        operation_id="getReadiness",
        summary="Ready to serve: database reachable and migrated",
        responses=error_responses(503),
    )
    async def ready(self, state: State) -> Response[Any]:
        reasons = await check_database(state)
        if reasons:
            body = {
                "type": "about:blank",
                "title": "Service Unavailable",
                "status": 503,
                "detail": "; ".join(reasons),
                "reasons": reasons,
            }
            return Response(
                body, status_code=503, media_type=PROBLEM_JSON, headers={"Retry-After": "5"}
            )
        return Response(Readiness(status="ready", checks={"database": "ok"}))
