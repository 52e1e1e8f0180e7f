"""The notifications admin API, the test email through the app's own sender, and the
development mailbox."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import httpx
from sqlalchemy import select

from app.core.db import Database
from app.main import create_app
from app.modules.notifications import EmailLinks, notify_run_outcome
from app.modules.notifications.models import OutboxEmail
from tests.conftest import make_settings, serve_in_process
from tests.fixtures.oidc import AuthHeaders
from tests.fixtures.smtp import SmtpTestServer, smtp_settings
from tests.notifications.conftest import MakeTenant

BASE = "/api/v1/tenants/acme/notifications"


async def test_settings_default_then_replaced_and_read_back(
    client: httpx.AsyncClient, auth_headers: AuthHeaders, tenant_with_recipients: MakeTenant
) -> None:
    await tenant_with_recipients(recipients=["first@acme.test"])
    await tenant_with_recipients("globex", recipients=["x@globex.test"])
    admin = auth_headers(tenant="acme", role="admin")

    response = await client.put(
        BASE,
        headers=admin,
        json={
            "recipients": ["Ops@Acme.test", "ops@acme.test", "lead@acme.test"],
            "alerts": {"import_failed": True, "import_succeeded": True, "source_recovered": False},
            "digest": {"enabled": True, "weekday": 5, "hour": 17},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["recipients"] == ["ops@acme.test", "lead@acme.test"]
    assert body["alerts"] == {
        "import_failed": True,
        "import_succeeded": True,
        "source_recovered": False,
    }
    assert body["digest"] == {"enabled": True, "weekday": 5, "hour": 17}
    assert body["timezone"] == "Europe/Berlin"

    again = await client.get(BASE, headers=admin)
    assert again.status_code == 200
    assert again.json() == body


async def test_settings_of_a_tenant_never_configured_are_the_defaults(
    client: httpx.AsyncClient, auth_headers: AuthHeaders, db: Database
) -> None:
    from app.modules.tenants import TenantCreate, create_tenant

    async with db.session(all_tenants=True) as session:
        await create_tenant(session, TenantCreate(id="acme", name="Acme", timezone="UTC"))
        await session.commit()
    response = await client.get(BASE, headers=auth_headers())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["recipients"] == []
    assert body["alerts"] == {
        "import_failed": True,
        "import_succeeded": False,
        "source_recovered": True,
    }
    assert body["digest"] == {"enabled": True, "weekday": 1, "hour": 8}
    assert body["updated_at"] is None


async def test_bad_addresses_and_header_injection_in_recipients_are_rejected(
    client: httpx.AsyncClient, auth_headers: AuthHeaders, tenant_with_recipients: MakeTenant
) -> None:
    await tenant_with_recipients(recipients=["ops@acme.test"])
    admin = auth_headers()
    for bad in (
        "ops@acme.test\r\nBcc: attacker@evil.test",
        "ops@acme.test\nBcc: attacker@evil.test",
        "ops@acme.test\n",
        "Ops <ops@acme.test>",
        "ops@acme.test, attacker@evil.test",
        "not-an-address",
        "ops@acme",
        "a" * 65 + "@acme.test",
    ):
        response = await client.put(BASE, headers=admin, json={"recipients": [bad]})
        assert response.status_code == 400, (bad, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    for bad_schedule in ({"weekday": 0}, {"weekday": 8}, {"hour": 24}, {"hour": -1}):
        response = await client.put(
            BASE, headers=admin, json={"recipients": [], "digest": bad_schedule}
        )
        assert response.status_code == 400, (bad_schedule, response.text)
    current = await client.get(BASE, headers=admin)
    assert current.json()["recipients"] == ["ops@acme.test"]


async def test_viewers_get_403_and_other_tenants_get_404(
    client: httpx.AsyncClient, auth_headers: AuthHeaders, tenant_with_recipients: MakeTenant
) -> None:
    await tenant_with_recipients()
    await tenant_with_recipients("globex")
    viewer = auth_headers(tenant="acme", role="viewer")
    globex_admin = auth_headers(tenant="globex", role="admin")
    for method, path in (
        ("GET", BASE),
        ("PUT", BASE),
        ("GET", f"{BASE}/outbox"),
        ("POST", f"{BASE}/test"),
    ):
        body = {"recipients": []} if method == "PUT" else None
        as_viewer = await client.request(method, path, headers=viewer, json=body)
        assert as_viewer.status_code == 403, (method, path)
        as_stranger = await client.request(method, path, headers=globex_admin, json=body)
        assert as_stranger.status_code == 404, (method, path)
        anonymous = await client.request(method, path, json=body)
        assert anonymous.status_code == 401, (method, path)


async def test_outbox_lists_own_emails_without_bodies_newest_first_in_pages(
    client: httpx.AsyncClient,
    auth_headers: AuthHeaders,
    db: Database,
    tenant_with_recipients: MakeTenant,
) -> None:
    await tenant_with_recipients(recipients=["a@acme.test", "b@acme.test", "c@acme.test"])
    await tenant_with_recipients("globex", recipients=["x@globex.test"])
    for tenant in ("acme", "globex"):
        async with db.session(all_tenants=True) as session:
            await notify_run_outcome(
                session,
                tenant_id=tenant,
                run_id=uuid.uuid4(),
                source_id=uuid.uuid4(),
                source_name=f"{tenant} source",
                status="failed",
                attempts=1,
                error="secret details of " + tenant,
                finished_at=datetime.now(UTC),
                links=EmailLinks("https://pulse.example"),
                previous_failures=0,
            )
            await session.commit()

    admin = auth_headers()
    first = await client.get(f"{BASE}/outbox", headers=admin, params={"limit": 2})
    assert first.status_code == 200, first.text
    page = first.json()
    assert len(page["items"]) == 2
    assert page["next_cursor"]
    second = await client.get(
        f"{BASE}/outbox", headers=admin, params={"limit": 2, "cursor": page["next_cursor"]}
    )
    rest = second.json()
    assert rest["next_cursor"] is None
    items = page["items"] + rest["items"]
    assert sorted(i["recipient"] for i in items) == ["a@acme.test", "b@acme.test", "c@acme.test"]
    assert len({i["id"] for i in items}) == 3
    for item in items:
        assert item["status"] == "pending"
        assert item["kind"] == "import_failed"
        assert item["subject"] == "[Pulse] Import failed: acme source"
        assert "body_text" not in item
        assert "body_html" not in item
    assert "globex" not in first.text + second.text

    failed_only = await client.get(f"{BASE}/outbox", headers=admin, params={"status": "failed"})
    assert failed_only.json()["items"] == []
    bad_cursor = await client.get(f"{BASE}/outbox", headers=admin, params={"cursor": "nope"})
    assert bad_cursor.status_code == 400


async def test_test_email_without_recipients_is_a_400(
    client: httpx.AsyncClient, auth_headers: AuthHeaders, tenant_with_recipients: MakeTenant
) -> None:
    await tenant_with_recipients()
    await client.put(BASE, headers=auth_headers(), json={"recipients": []})
    response = await client.post(f"{BASE}/test", headers=auth_headers())
    assert response.status_code == 400
    assert response.json()["field"] == "recipients"


async def test_test_email_is_delivered_by_the_apps_sender_over_starttls_and_auth(
    database_url: str,
    clean_tables: None,
    auth_headers: AuthHeaders,
    db: Database,
    tenant_with_recipients: MakeTenant,
    smtp_server: SmtpTestServer,
) -> None:
    await tenant_with_recipients(name="Acme <Inc>", recipients=["ops@acme.test", "cto@acme.test"])
    app = create_app(
        make_settings(
            database_url,
            **{**smtp_settings(smtp_server), "notify_poll_interval_s": 30.0},  # woken, not polled
        )
    )
    async with serve_in_process(app) as client:
        response = await client.post(f"{BASE}/test", headers=auth_headers(sub="alice"))
        assert response.status_code == 202, response.text
        assert response.json() == {"queued": 2, "recipients": ["ops@acme.test", "cto@acme.test"]}
        mails = await smtp_server.wait_for(2)
        async with asyncio.timeout(10):
            while True:
                outbox = await client.get(f"{BASE}/outbox", headers=auth_headers())
                if all(i["status"] == "sent" for i in outbox.json()["items"]):
                    break
                await asyncio.sleep(0.02)
    assert sorted(m.recipients[0] for m in mails) == ["cto@acme.test", "ops@acme.test"]
    mail = mails[0]
    assert mail.subject == "[Pulse] Test email"
    assert "requested by alice" in mail.body("plain")
    assert "Acme <Inc>" in mail.body("plain")
    assert "Acme &lt;Inc&gt;" in mail.body("html")
    assert "Acme <Inc>" not in mail.body("html")


async def test_dev_mailbox_route_does_not_exist_outside_development(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/v1/dev/mail")
    assert response.status_code == 404


async def test_development_catcher_receives_mail_readable_without_a_token(
    database_url: str,
    clean_tables: None,
    auth_headers: AuthHeaders,
    db: Database,
    tenant_with_recipients: MakeTenant,
) -> None:
    await tenant_with_recipients(recipients=["dev@acme.test"])
    app = create_app(make_settings(database_url, env="development", notify_poll_interval_s=0.05))
    async with serve_in_process(app) as client:
        response = await client.post(f"{BASE}/test", headers=auth_headers())
        assert response.status_code == 202, response.text
        async with asyncio.timeout(10):
            while True:
                caught = await client.get("/api/v1/dev/mail")
                assert caught.status_code == 200, caught.text
                if caught.json():
                    break
                await asyncio.sleep(0.02)
    [message] = caught.json()
    assert message["recipients"] == ["dev@acme.test"]
    assert message["subject"] == "[Pulse] Test email"
    assert "notifications for this tenant reach you" in message["text"]
    assert message["html"].startswith("<!DOCTYPE html>")
    async with db.session(all_tenants=True) as session:
        [row] = (await session.execute(select(OutboxEmail))).scalars().all()
    assert row.status == "sent"


async def test_routes_are_documented_in_the_openapi_schema(client: httpx.AsyncClient) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    operations = {
        op["operationId"]: op
        for path in response.json()["paths"].values()
        for op in path.values()
        if isinstance(op, dict) and "operationId" in op
    }
    for operation_id in (
        "getNotificationSettings",
        "putNotificationSettings",
        "listNotificationOutbox",
        "sendTestNotification",
    ):
        op = operations[operation_id]
        assert op["tags"] == ["notifications"]
        assert op["summary"]
        assert {"401", "403", "404"} <= set(op["responses"])
    assert "listCaughtMail" not in operations
