"""Tenants API: operators create, list, change and delete tenants; members read theirs."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import error_responses
from app.modules.tenants import service
from app.modules.tenants.schemas import Tenant, TenantCreate, TenantPage, TenantUpdate


class TenantController(Controller):
    path = "/api/v1/tenants"
    tags = ["tenants"]

    @post(
        "/",
        operation_id="createTenant",
        summary="Create a tenant (operator)",
        status_code=HTTP_201_CREATED,
        opt={"role": "operator"},
        responses=error_responses(400, 401, 403, 409, 503),
    )
    async def create(
        self, db_session: NamedDependency[AsyncSession], data: JSONBody[TenantCreate]
    ) -> Tenant:
        return await service.create_tenant(db_session, data)

    @get(
        "/",
        operation_id="listTenants",
        summary="List tenants, ordered by id (operator)",
        opt={"role": "operator"},
        responses=error_responses(400, 401, 403, 503),
    )
    async def index(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Annotated[int, QueryParameter(ge=1, le=500, description="page size")] = 50,
        cursor: Annotated[
            str | None, QueryParameter(description="next_cursor of the previous page")
        ] = None,
    ) -> TenantPage:
        return await service.list_tenants(db_session, limit=limit, cursor=cursor)

    @get(
        "/{tenant_id:str}",
        operation_id="getTenant",
        summary="A tenant: name, timezone and settings (members and operators)",
        opt={"role": "viewer"},
        responses=error_responses(401, 404, 503),
    )
    async def show(
        self, db_session: NamedDependency[AsyncSession], tenant_id: FromPath[str]
    ) -> Tenant:
        return await service.get_tenant(db_session, tenant_id)

    @patch(
        "/{tenant_id:str}",
        operation_id="updateTenant",
        summary="Change a tenant's name, timezone or settings (operator)",
        opt={"role": "operator"},
        responses=error_responses(400, 401, 403, 404, 503),
    )
    async def update(
        self,
        db_session: NamedDependency[AsyncSession],
        tenant_id: FromPath[str],
        data: JSONBody[TenantUpdate],
    ) -> Tenant:
        return await service.update_tenant(db_session, tenant_id, data)

    @delete(
        "/{tenant_id:str}",
        operation_id="deleteTenant",
        summary="Delete a tenant and all of its data (operator)",
        description=(
            "Deletes the tenant row; every tenant-owned table (events, rollups, sources,"
            " schedules, runs, secrets, notification settings and outbox) references"
            " tenants.id with ON DELETE CASCADE, so PostgreSQL removes all of the tenant's"
            " data in the same transaction. Not refused while runs are active: a running"
            " import's later writes fail on the missing tenant and the run ends as failed."
        ),
        status_code=HTTP_204_NO_CONTENT,
        opt={"role": "operator"},
        responses=error_responses(401, 403, 404, 503),
    )
    async def remove(
        self, db_session: NamedDependency[AsyncSession], tenant_id: FromPath[str]
    ) -> None:
        await service.delete_tenant(db_session, tenant_id)
