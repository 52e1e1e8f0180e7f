"""Admin API for a tenant's email notifications."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Response, get, post, put
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import error_responses
from app.modules.auth import Principal
from app.modules.notifications import service
from app.modules.notifications.deps import SenderWakeUp
from app.modules.notifications.schemas import (
    NotificationSettings,
    NotificationSettingsUpdate,
    OutboxPage,
    TestEmailQueued,
)

OutboxStatus = Literal["pending", "sending", "sent", "failed"]
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Page size")]


class NotificationsController(Controller):
    path = "/api/v1/tenants/{tenant_id:str}/notifications"
    tags = ["notifications"]
    opt = {"role": "admin"}

    @get(
        "",
        operation_id="getNotificationSettings",
        summary="Recipients, alert switches and the weekly digest schedule",
        responses=error_responses(401, 403, 404),
    )
    async def get_settings(
        self, tenant_id: FromPath[str], db_session: NamedDependency[AsyncSession]
    ) -> NotificationSettings:
        return await service.get_notification_settings(db_session, tenant_id)

    @put(
        "",
        operation_id="putNotificationSettings",
        summary="Replace recipients, alert switches and the digest schedule",
        responses=error_responses(400, 401, 403, 404),
    )
    async def put_settings(
        self,
        tenant_id: FromPath[str],
        data: JSONBody[NotificationSettingsUpdate],
        db_session: NamedDependency[AsyncSession],
    ) -> NotificationSettings:
        return await service.update_notification_settings(db_session, tenant_id, data)

    @get(
        "/outbox",
        operation_id="listNotificationOutbox",
        summary="Recent emails with status, attempts and last error (newest first)",
        responses=error_responses(400, 401, 403, 404),
    )
    async def list_outbox(
        self,
        tenant_id: FromPath[str],
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 50,
        status: Annotated[
            OutboxStatus | None, QueryParameter(description="Only emails in this status")
        ] = None,
        cursor: Annotated[
            str | None, QueryParameter(description="next_cursor of the previous page")
        ] = None,
    ) -> OutboxPage:
        return await service.list_outbox(
            db_session, tenant_id, limit=limit, status=status, cursor=cursor
        )

    @post(
        "/test",
        operation_id="sendTestNotification",
        summary="Queue a test email to every recipient",
        status_code=202,
        responses=error_responses(400, 401, 403, 404),
    )
    async def send_test(
        self,
        tenant_id: FromPath[str],
        db_session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
        sender_wake_up: NamedDependency[SenderWakeUp],
    ) -> Response[TestEmailQueued]:
        queued = await service.queue_test_email(
            db_session, tenant_id, requested_by=principal.subject
        )
        # After the response, i.e. after the request's transaction committed.
        return Response(queued, status_code=202, background=BackgroundTask(sender_wake_up))
