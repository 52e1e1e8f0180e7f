"""Sources and runs of a tenant: ``/api/v1/tenants/{tenant_id}/sources`` and ``/runs``.

Thin: parse, call the service, return a schema. The app guard checks the token,
the tenant membership (404) and the role in ``opt`` (403).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import httpx
import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Response, ServerSentEvent
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.crypto import SecretBox
from app.core.db import Database
from app.core.errors import error_responses
from app.core.outbound import policy_for
from app.core.settings import Settings
from app.modules.ingestion import schemas, service
from app.modules.ingestion.deps import RunnerSignals

TENANT = "/api/v1/tenants/{tenant_id:str}"
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Page size")]
Cursor = Annotated[
    str | None, QueryParameter(max_length=200, description="next_cursor of the previous page")
]


class SourceController(Controller):
    path = f"{TENANT}/sources"
    tags = ["ingestion"]
    opt = {"role": "admin"}

    @post(
        "/",
        operation_id="createSource",
        summary="Create a source (secrets are write-only and stored encrypted)",
        responses=error_responses(400, 401, 403, 404, 409),
    )
    async def create(
        self,
        tenant_id: FromPath[str],
        data: JSONBody[schemas.SourceCreate],
        db_session: NamedDependency[AsyncSession],
        secret_box: NamedDependency[SecretBox],
        settings: NamedDependency[Settings],
    ) -> schemas.Source:
        outbound = policy_for(settings)
        return await service.create_source(
            db_session, secret_box, tenant_id, data, outbound=outbound
        )

    @get(
        "/",
        operation_id="listSources",
        summary="List the tenant's sources",
        responses=error_responses(401, 403, 404),
    )
    async def list_(
        self, tenant_id: FromPath[str], db_session: NamedDependency[AsyncSession]
    ) -> schemas.SourceList:
        return await service.list_sources(db_session, tenant_id)

    @get(
        "/{source_id:uuid}",
        operation_id="getSource",
        summary="Get a source",
        responses=error_responses(401, 403, 404),
    )
    async def get_(
        self,
        tenant_id: FromPath[str],
        source_id: FromPath[uuid.UUID],
        db_session: NamedDependency[AsyncSession],
    ) -> schemas.Source:
        return await service.get_source(db_session, tenant_id, source_id)

    @patch(
        "/{source_id:uuid}",
        operation_id="updateSource",
        summary="Update a source (given fields only; a given config or secrets replaces all of it)",
        responses=error_responses(400, 401, 403, 404, 409),
    )
    async def update(
        self,
        tenant_id: FromPath[str],
        source_id: FromPath[uuid.UUID],
        data: JSONBody[schemas.SourceUpdate],
        db_session: NamedDependency[AsyncSession],
        secret_box: NamedDependency[SecretBox],
        settings: NamedDependency[Settings],
    ) -> schemas.Source:
        outbound = policy_for(settings)
        return await service.update_source(
            db_session, secret_box, tenant_id, source_id, data, outbound=outbound
        )

    @delete(
        "/{source_id:uuid}",
        operation_id="deleteSource",
        summary="Delete a source with its runs (loaded events stay)",
        responses=error_responses(401, 403, 404),
        status_code=HTTP_204_NO_CONTENT,
    )
    async def delete_(
        self,
        tenant_id: FromPath[str],
        source_id: FromPath[uuid.UUID],
        db_session: NamedDependency[AsyncSession],
    ) -> None:
        await service.delete_source(db_session, tenant_id, source_id)

    @post(
        "/{source_id:uuid}/test",
        operation_id="testSource",
        summary="Check connectivity and permissions of a source, within a timeout",
        responses=error_responses(401, 403, 404),
        status_code=200,
    )
    async def test(
        self,
        tenant_id: FromPath[str],
        source_id: FromPath[uuid.UUID],
        db_session: NamedDependency[AsyncSession],
        secret_box: NamedDependency[SecretBox],
        settings: NamedDependency[Settings],
        http_client: NamedDependency[httpx.AsyncClient | None],
        bigquery_pool: NamedDependency[ThreadPoolExecutor | None],
    ) -> schemas.SourceTestResult:
        return await service.check_source(
            db_session,
            secret_box,
            tenant_id,
            source_id,
            timeout_s=settings.ingest_test_timeout_s,
            http=http_client,
            executor=bigquery_pool,
            outbound=policy_for(settings),
        )

    @post(
        "/{source_id:uuid}/runs",
        operation_id="createRun",
        summary="Start a manual run or a backfill of a date range",
        responses=error_responses(400, 401, 403, 404),
        status_code=HTTP_202_ACCEPTED,
    )
    async def create_run(
        self,
        tenant_id: FromPath[str],
        source_id: FromPath[uuid.UUID],
        data: JSONBody[schemas.RunCreate],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
        runner_signals: NamedDependency[RunnerSignals],
    ) -> Response[schemas.Run]:
        run = await service.create_run(
            db_session, tenant_id, source_id, data, max_attempts=settings.ingest_max_attempts
        )
        # After the response (so after the commit): wake this process's runner.
        return Response(
            run,
            status_code=HTTP_202_ACCEPTED,
            background=BackgroundTask(runner_signals.wake),
        )


class RunController(Controller):
    path = f"{TENANT}/runs"
    tags = ["ingestion"]
    opt = {"role": "admin"}

    @get(
        "/",
        operation_id="listRuns",
        summary="List runs, newest first (filter by source and status)",
        responses=error_responses(400, 401, 403, 404),
    )
    async def list_(
        self,
        tenant_id: FromPath[str],
        db_session: NamedDependency[AsyncSession],
        source_id: Annotated[
            uuid.UUID | None, QueryParameter(description="Only this source")
        ] = None,
        status: Annotated[
            schemas.RunStatus | None, QueryParameter(description="Only this status")
        ] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> schemas.RunPage:
        return await service.list_runs(
            db_session, tenant_id, source_id=source_id, status=status, limit=limit, cursor=cursor
        )

    @get(
        "/{run_id:uuid}",
        operation_id="getRun",
        summary="Get a run with its progress",
        responses=error_responses(401, 403, 404),
    )
    async def get_(
        self,
        tenant_id: FromPath[str],
        run_id: FromPath[uuid.UUID],
        db_session: NamedDependency[AsyncSession],
    ) -> schemas.Run:
        return await service.get_run(db_session, tenant_id, run_id)

    @post(
        "/{run_id:uuid}/cancel",
        operation_id="cancelRun",
        summary="Cancel a run (a running one stops at its next batch, within seconds)",
        responses=error_responses(401, 403, 404, 409),
        status_code=HTTP_202_ACCEPTED,
    )
    async def cancel(
        self,
        tenant_id: FromPath[str],
        run_id: FromPath[uuid.UUID],
        db_session: NamedDependency[AsyncSession],
        runner_signals: NamedDependency[RunnerSignals],
    ) -> Response[schemas.Run]:
        run = await service.cancel_run(db_session, tenant_id, run_id)
        return Response(
            run,
            status_code=HTTP_202_ACCEPTED,
            background=BackgroundTask(runner_signals.request_cancel, run_id),
        )

    @get(
        "/{run_id:uuid}/quarantine",
        operation_id="listQuarantinedRows",
        summary="Rows of a run that failed validation, with line numbers and reasons",
        responses=error_responses(400, 401, 403, 404),
    )
    async def quarantine(
        self,
        tenant_id: FromPath[str],
        run_id: FromPath[uuid.UUID],
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> schemas.QuarantinePage:
        return await service.list_quarantine(
            db_session, tenant_id, run_id, limit=limit, cursor=cursor
        )

    @get(
        "/{run_id:uuid}/progress",
        operation_id="streamRunProgress",
        summary="Live progress as server-sent events until the run ends",
        media_type="text/event-stream",
        responses=error_responses(400, 401, 403, 404),
    )
    async def progress(
        self,
        tenant_id: FromPath[str],
        run_id: FromPath[uuid.UUID],
        db: NamedDependency[Database],
        db_session: NamedDependency[AsyncSession],
    ) -> ServerSentEvent:
        await service.get_run(db_session, tenant_id, run_id)  # 404 before streaming
        await db_session.close()
        return ServerSentEvent(_progress_events(db, tenant_id, run_id))


FINAL = frozenset({"succeeded", "failed", "cancelled"})


async def _progress_events(
    db: NamedDependency[Database],
    tenant_id: FromPath[str],
    run_id: FromPath[uuid.UUID],
    *,
    every_s: float = 1.0,
) -> AsyncIterator[dict[str, Any]]:
    last: bytes | None = None
    while True:
        async with asyncio.timeout(10), db.session(tenant_id) as session:
            run = await service.get_run(session, tenant_id, run_id)
        body = msgspec.json.encode(run)
        if body != last:
            last = body
            yield {"event": "run", "data": body.decode(), "id": str(run.updated_at.timestamp())}
        if run.status in FINAL:
            return
        await asyncio.sleep(every_s)
