"""An email's log lines carry its outbox id and tenant, and an email queued by a request
carries that request's id (recorded on the outbox row: the sender runs later, elsewhere)."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

from sqlalchemy import select

from app.core.db import Database
from app.core.logging import configure_logging
from app.main import create_app
from app.modules.notifications.models import OutboxEmail
from tests.conftest import make_settings, serve_in_process
from tests.fixtures.ingestion import wait_until
from tests.fixtures.oidc import AuthHeaders
from tests.fixtures.smtp import SmtpTestServer, smtp_settings
from tests.notifications.conftest import MakeTenant

BASE = "/api/v1/tenants/acme/notifications"


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


async def test_a_test_email_queued_by_a_request_is_sent_with_email_tenant_and_request_ids(
    database_url: str,
    clean_tables: None,
    auth_headers: AuthHeaders,
    db: Database,
    tenant_with_recipients: MakeTenant,
    smtp_server: SmtpTestServer,
) -> None:
    await tenant_with_recipients(recipients=["ops@acme.test", "cto@acme.test"])
    settings = make_settings(database_url, **smtp_settings(smtp_server), log_level="INFO")
    app = create_app(settings)
    stream = io.StringIO()
    configure_logging(
        make_settings(database_url, log_level="INFO", log_format="json"), stream=stream
    )
    request_id = f"req-{uuid.uuid4().hex}"
    try:
        async with serve_in_process(app) as client:
            response = await client.post(
                f"{BASE}/test", headers={**auth_headers(), "X-Request-ID": request_id}
            )
            assert response.status_code == 202, response.text
            await smtp_server.wait_for(2)

            async def both_sent_logged() -> bool:
                return sum(line["event"] == "email.sent" for line in _lines(stream)) == 2

            await wait_until(both_sent_logged, timeout_s=30)
    finally:
        configure_logging(make_settings(database_url))

    async with db.session(all_tenants=True) as session:
        rows = (await session.execute(select(OutboxEmail))).scalars().all()
    assert {row.request_id for row in rows} == {request_id}
    sent = [line for line in _lines(stream) if line["event"] == "email.sent"]
    assert {line["email_id"] for line in sent} == {str(row.id) for row in rows}
    for line in sent:
        assert line["tenant_id"] == "acme"
        assert line["request_id"] == request_id
