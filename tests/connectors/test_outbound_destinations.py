"""Tenant-configured destinations are checked when connecting (SFTP) and when stored
(BigQuery's endpoint override), against PULSE_OUTBOUND_ALLOW set explicitly here."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from typing import Any

import httpx
import pytest

from app.core.outbound import OutboundPolicy
from app.core.settings import Settings
from app.modules.ingestion.connectors.base import DateWindow, TerminalError
from app.modules.ingestion.connectors.bigquery import BigQueryConnector
from app.modules.ingestion.connectors.sftp import SftpConnector
from tests.connectors.helpers import collect, extract_context, source_context
from tests.fixtures.bigquery import BigQueryFake
from tests.fixtures.ingestion import IngestKit, fast_settings
from tests.fixtures.oidc import AuthHeaders
from tests.fixtures.sftp import SftpServer

SFTP = SftpConnector()
BIGQUERY = BigQueryConnector()
NOTHING = OutboundPolicy.from_allow_list("none")
BASE = "/api/v1/tenants/acme"


def _sftp_ctx(server: SftpServer, outbound: OutboundPolicy, **config: Any) -> Any:
    return extract_context(
        SFTP, server.config(**config), server.secrets(), outbound=outbound, batch_rows=1000
    )


@pytest.mark.parametrize(
    ("host", "shown", "rule"),
    [
        ("127.0.0.1", "127.0.0.1", "a loopback address"),
        ("10.0.0.1", "10.0.0.1", "a private address"),
        ("169.254.169.254", "169.254.169.254", "a cloud metadata address"),
        ("localhost", "localhost (", "a loopback address"),
    ],
)
async def test_sftp_source_at_an_internal_address_is_refused_without_the_setting(
    sftp_server: SftpServer, host: str, shown: str, rule: str
) -> None:
    await sftp_server.write("day1.csv", b"event_id,event_name,occurred_at\n")
    result = await SFTP.test(
        source_context(SFTP, sftp_server.config(host=host), sftp_server.secrets(), outbound=NOTHING)
    )
    assert not result.ok
    detail = result.checks[-1].detail
    assert f"refused to connect to {shown}" in detail
    assert f"{rule} is not allowed" in detail
    with pytest.raises(TerminalError, match="PULSE_OUTBOUND_ALLOW"):
        await collect(SFTP, _sftp_ctx(sftp_server, NOTHING, host=host))


async def test_sftp_source_on_loopback_works_when_the_setting_allows_it(
    sftp_server: SftpServer,
) -> None:
    await sftp_server.write("day1.csv", b"event_id,event_name,occurred_at\n")
    for allow, host in (("127.0.0.1/32", "127.0.0.1"), ("localhost", "localhost")):
        policy = OutboundPolicy.from_allow_list(allow)
        ctx = source_context(
            SFTP, sftp_server.config(host=host), sftp_server.secrets(), outbound=policy
        )
        result = await SFTP.test(ctx)
        assert result.ok, result.checks


async def test_sftp_private_address_allowed_by_the_setting_is_not_refused(
    sftp_server: SftpServer,
) -> None:
    policy = OutboundPolicy.from_allow_list("10.0.0.0/8")
    ctx = source_context(
        SFTP,
        sftp_server.config(host="10.255.255.1", connect_timeout_s=0.5),
        sftp_server.secrets(),
        outbound=policy,
    )
    result = await SFTP.test(ctx)
    assert not result.ok  # nothing listens there, but Pulse tried
    assert "refused to connect" not in result.checks[-1].detail


async def test_sftp_connects_to_the_checked_address_not_to_a_second_resolution(
    sftp_server: SftpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answers loopback (allowed) once, then a private address.
    The connection must go to the address that was checked."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    answers = iter(["127.0.0.1", "10.255.255.1", "10.255.255.1"])
    asked: list[str] = []

    async def rebinding(host: Any, port: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return await real(host, port, **kwargs)
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(loop, "getaddrinfo", rebinding)
    await sftp_server.write("day1.csv", b"event_id,event_name,occurred_at\n")
    policy = OutboundPolicy.from_allow_list("127.0.0.1/32")
    result = await SFTP.test(
        source_context(
            SFTP, sftp_server.config(host="rebind.test"), sftp_server.secrets(), outbound=policy
        )
    )
    assert result.ok, result.checks
    assert asked == ["rebind.test"]


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-bigquery")
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)


async def test_bigquery_endpoint_override_is_refused_at_run_time_unless_allowed(
    bigquery_fake: BigQueryFake, pool: ThreadPoolExecutor
) -> None:
    config = {"project": "demo", "dataset": "analytics_1", "api_endpoint": bigquery_fake.endpoint}
    result = await BIGQUERY.test(source_context(BIGQUERY, config, executor=pool, outbound=NOTHING))
    assert not result.ok
    assert "config.api_endpoint: refused to connect to 127.0.0.1" in result.checks[-1].detail
    today = DateWindow(date.today(), date.today())
    ctx = extract_context(BIGQUERY, config, window=today, executor=pool, outbound=NOTHING)
    with pytest.raises(TerminalError, match="endpoint override is honoured only for a host"):
        await collect(BIGQUERY, ctx)
    assert bigquery_fake.calls == []  # refused before any request left

    allowed = OutboundPolicy.from_allow_list("127.0.0.1/32")
    result = await BIGQUERY.test(source_context(BIGQUERY, config, executor=pool, outbound=allowed))
    assert "refused to connect" not in " ".join(c.detail for c in result.checks)
    assert result.checks[0].ok  # the client was built against the allowed endpoint


# --- through the API, with the app's own setting ----------------------------------------
@pytest.fixture
def settings(database_url: str, request: pytest.FixtureRequest) -> Settings:
    return fast_settings(database_url, outbound_allow=getattr(request, "param", "none"))


@pytest.fixture
async def admin(ingest: IngestKit, auth_headers: AuthHeaders) -> dict[str, str]:
    await ingest.tenant()
    return auth_headers(tenant="acme", role="admin")


def _bigquery_source(endpoint: str) -> dict[str, Any]:
    return {
        "kind": "bigquery_ga4",
        "name": "ga4",
        "config": {"project": "demo", "dataset": "analytics_1", "api_endpoint": endpoint},
    }


async def test_bigquery_endpoint_override_is_rejected_at_create_and_update_with_a_400(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    refused = await client.post(
        f"{BASE}/sources", json=_bigquery_source("http://169.254.169.254"), headers=admin
    )
    assert refused.status_code == 400, refused.text
    problem = refused.json()
    assert problem["field"] == "config.api_endpoint"
    assert "169.254.169.254" in problem["detail"]
    assert "PULSE_OUTBOUND_ALLOW" in problem["detail"]

    plain = {**_bigquery_source(""), "config": {"project": "demo", "dataset": "analytics_1"}}
    created = await client.post(f"{BASE}/sources", json=plain, headers=admin)
    assert created.status_code == 201, created.text
    updated = await client.patch(
        f"{BASE}/sources/{created.json()['id']}",
        json={"config": _bigquery_source("http://127.0.0.1:9050")["config"]},
        headers=admin,
    )
    assert updated.status_code == 400, updated.text
    assert updated.json()["field"] == "config.api_endpoint"


@pytest.mark.parametrize("settings", ["127.0.0.1/32"], indirect=True)
async def test_bigquery_endpoint_override_is_stored_when_the_setting_allows_its_host(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    created = await client.post(
        f"{BASE}/sources", json=_bigquery_source("http://127.0.0.1:9050"), headers=admin
    )
    assert created.status_code == 201, created.text


async def test_source_test_endpoint_names_the_refused_address_and_rule(
    client: httpx.AsyncClient, admin: dict[str, str], sftp_server: SftpServer
) -> None:
    source = {
        "kind": "sftp",
        "name": "drop",
        "config": sftp_server.config(),
        "secrets": sftp_server.secrets(),
    }
    created = await client.post(f"{BASE}/sources", json=source, headers=admin)
    assert created.status_code == 201, created.text
    tested = await client.post(f"{BASE}/sources/{created.json()['id']}/test", headers=admin)
    assert tested.status_code == 200, tested.text
    body = tested.json()
    assert body["ok"] is False
    detail = body["checks"][-1]["detail"]
    assert "refused to connect to 127.0.0.1: a loopback address is not allowed" in detail
