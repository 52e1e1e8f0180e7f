"""Bad input at the edge: a 400 (or 413) naming what was wrong, never a 500 or a stored typo."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import httpx
import pytest

from tests.fixtures.oidc import AuthHeaders

TENANT = "/api/v1/tenants/acme"
NUL = "a\u0000b"
HOST_KEY = "SHA256:" + "A" * 43


def sftp_source(**config: Any) -> dict[str, Any]:
    return {
        "kind": "sftp",
        "name": "drops",
        "config": {"host": "sftp.example.com", "username": "pulse", "host_key": HOST_KEY, **config},
        "secrets": {"password": "x"},
    }


def synthetic_source(**config: Any) -> dict[str, Any]:
    return {"kind": "synthetic", "name": "demo", "config": {"seed": 1, **config}}


@pytest.fixture
async def operator(client: httpx.AsyncClient, auth_headers: AuthHeaders) -> dict[str, str]:
    headers = auth_headers(None, "operator")
    created = await client.post(
        "/api/v1/tenants", json={"id": "acme", "name": "Acme"}, headers=headers
    )
    assert created.status_code == 201, created.text
    return headers


@pytest.fixture
async def source_id(client: httpx.AsyncClient, operator: dict[str, str]) -> str:
    created = await client.post(f"{TENANT}/sources", json=synthetic_source(), headers=operator)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def assert_bad_request(response: httpx.Response, field: str | None) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    if field is not None:
        # Named in the detail and the errors list, or (stats routes) in the ``field`` member.
        named_in_detail = field in body["detail"] and any(
            e.get("key") == field for e in body.get("errors", [])
        )
        assert named_in_detail or body.get("field") == field, body


Request = tuple[str, Callable[[str], str], dict[str, Any] | None]

# (method, path given the source id, JSON body) with a NUL in the named stored text field.
NUL_IN_STORED_TEXT: dict[str, Request] = {
    "tenant name (create)": ("POST", lambda _: "/api/v1/tenants", {"id": "beta", "name": NUL}),
    "tenant name (update)": ("PATCH", lambda _: TENANT, {"name": NUL}),
    "tenant conversion event": (
        "PATCH",
        lambda _: TENANT,
        {"settings": {"conversion_events": ["purchase", NUL]}},
    ),
    "source name (create)": (
        "POST",
        lambda _: f"{TENANT}/sources",
        {**synthetic_source(), "name": NUL},
    ),
    "source name (update)": ("PATCH", lambda s: f"{TENANT}/sources/{s}", {"name": NUL}),
    "sftp host": ("POST", lambda _: f"{TENANT}/sources", sftp_source(host=NUL)),
    "sftp column mapping key": (
        "POST",
        lambda _: f"{TENANT}/sources",
        sftp_source(column_mapping={NUL: "event_name"}),
    ),
    "schedule cron": (
        "PATCH",
        lambda s: f"{TENANT}/sources/{s}",
        {"schedule": {"cron": "0 3 * * *" + "\u0000"}},
    ),
    "run files": ("POST", lambda s: f"{TENANT}/sources/{s}/runs", {"files": [NUL]}),
    "notification recipient": (
        "PUT",
        lambda _: f"{TENANT}/notifications",
        {"recipients": ["ops\u0000@example.com"]},
    ),
    "stats filter value": (
        "POST",
        lambda _: f"{TENANT}/stats/query",
        {"metrics": ["users"], "filters": [["is", "country", [NUL]]]},
    ),
}
NUL_FIELDS = {
    "tenant name (create)": "name",
    "tenant name (update)": "name",
    "tenant conversion event": "settings.conversion_events[1]",
    "source name (create)": "name",
    "source name (update)": "name",
    "sftp host": "config.host",
    "sftp column mapping key": "config.column_mapping",
    "schedule cron": "schedule.cron",
    "run files": "files[0]",
    "notification recipient": "recipients[0]",
    "stats filter value": "filters[0][2][0]",
}


@pytest.mark.parametrize("case", sorted(NUL_IN_STORED_TEXT))
async def test_nul_in_stored_text_is_400_naming_the_field(
    client: httpx.AsyncClient, operator: dict[str, str], source_id: str, case: str
) -> None:
    method, path, body = NUL_IN_STORED_TEXT[case]
    response = await client.request(method, path(source_id), json=body, headers=operator)
    assert_bad_request(response, NUL_FIELDS[case])
    assert "NUL" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/api/v1/tenants?cursor=a%00b", "cursor"),
        (f"{TENANT}/notifications/outbox?cursor=%00", "cursor"),
        (
            f"{TENANT}/stats/breakdown?dimension=country&filters=%5B%5B%22is%22%2C%22country%22%2C%5B%22a%00%22%5D%5D%5D",
            "filters",
        ),
        ("/api/v1/tenants/ac%00me", "path"),
    ],
)
async def test_nul_in_url_is_400_naming_the_parameter(
    client: httpx.AsyncClient, operator: dict[str, str], path: str, param: str
) -> None:
    response = await client.get(path, headers=operator)
    assert_bad_request(response, param)


DEEP = b"[" * 1000 + b"]" * 1000


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/tenants", DEEP),
        ("PATCH", TENANT, DEEP),
        ("POST", f"{TENANT}/sources", DEEP),
        (
            "POST",
            f"{TENANT}/sources",
            b'{"kind": "synthetic", "name": "x", "secrets": {"token": ' + DEEP + b"}}",
        ),
        ("PATCH", "{source}", b'{"config": {"seed": ' + DEEP + b"}}"),
        ("POST", "{source}/runs", DEEP),
        ("PUT", f"{TENANT}/notifications", DEEP),
        ("POST", f"{TENANT}/stats/query", b'{"metrics": ["users"], "filters": ' + DEEP + b"}"),
    ],
)
async def test_deeply_nested_json_is_400(
    client: httpx.AsyncClient,
    operator: dict[str, str],
    source_id: str,
    method: str,
    path: str,
    body: bytes,
) -> None:
    url = path.replace("{source}", f"{TENANT}/sources/{source_id}")
    response = await client.request(
        method, url, content=body, headers={**operator, "content-type": "application/json"}
    )
    assert_bad_request(response, None)
    assert "nested deeper" in response.json()["detail"]


async def test_deeply_nested_filters_query_parameter_is_400(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    response = await client.get(
        f"{TENANT}/stats/breakdown",
        params={"dimension": "country", "filters": "[" * 1000 + "]" * 1000},
        headers=operator,
    )
    assert_bad_request(response, None)


async def test_oversized_body_is_413(client: httpx.AsyncClient, operator: dict[str, str]) -> None:
    body = {"id": "beta", "name": "Beta", "padding": "x" * (2 * 1024 * 1024)}
    response = await client.post("/api/v1/tenants", json=body, headers=operator)
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("path", "param"),
    [
        (f"{TENANT}/runs?limit=158102754410706960384", "limit"),
        (f"{TENANT}/runs/00000000-0000-0000-0000-000000000001/quarantine?limit={2**63}", "limit"),
        (f"{TENANT}/stats/breakdown?dimension=country&offset={2**64}", "offset"),
        (f"{TENANT}/stats/breakdown?dimension=country&limit={2**64}", "limit"),
    ],
)
async def test_integers_beyond_bigint_are_400(
    client: httpx.AsyncClient, operator: dict[str, str], path: str, param: str
) -> None:
    response = await client.get(path, headers=operator)
    assert response.status_code == 400, response.text
    assert any(e.get("key") == param for e in response.json()["errors"]), response.text


# Inputs the API used to accept (2xx) although they are wrong: (what, body, field).
WRONG_SOURCES: list[tuple[str, dict[str, Any], str]] = [
    ("timezone", sftp_source(timezone="Mars/Base"), "config"),
    ("host", sftp_source(host="sftp://files.example.com/drop"), "config"),
    ("csv_delimiter", sftp_source(csv_delimiter="\n"), "config"),
    (
        "service_account_json",
        {
            "kind": "bigquery_ga4",
            "name": "ga4",
            "config": {"project": "demo", "dataset": "analytics_1"},
            "secrets": {"service_account_json": "{not json"},
        },
        "secrets",
    ),
    (
        "service_account_json",
        {
            "kind": "bigquery_ga4",
            "name": "ga4",
            "config": {"project": "demo", "dataset": "analytics_1"},
            "secrets": {"service_account_json": {"type": "authorized_user"}},
        },
        "secrets",
    ),
    ("seed", synthetic_source(seed=10**30), "config"),
    ("seed", synthetic_source(seed=-1), "config"),
    (
        "interval_s",
        {**synthetic_source(), "schedule": {"interval_s": "60"}},
        "schedule.interval_s",
    ),
]


@pytest.mark.parametrize(
    ("what", "body", "field"),
    WRONG_SOURCES,
    ids=[f"{w}-{i}" for i, (w, _, _) in enumerate(WRONG_SOURCES)],
)
async def test_wrong_source_configuration_is_400(
    client: httpx.AsyncClient, operator: dict[str, str], what: str, body: dict[str, Any], field: str
) -> None:
    response = await client.post(f"{TENANT}/sources", json=body, headers=operator)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem.get("field") == field or any(
        e.get("key") == field for e in problem.get("errors", [])
    ), problem
    assert what in problem["detail"], problem


async def test_backfill_before_2000_is_400(
    client: httpx.AsyncClient, operator: dict[str, str], source_id: str
) -> None:
    response = await client.post(
        f"{TENANT}/sources/{source_id}/runs",
        json={"trigger": "backfill", "start": "0001-01-01", "end": "0001-01-31"},
        headers=operator,
    )
    assert_bad_request(response, None)
    assert response.json()["field"] == "start"
    assert "2000-01-01" in response.json()["detail"]


async def test_files_on_a_synthetic_run_is_400(
    client: httpx.AsyncClient, operator: dict[str, str], source_id: str
) -> None:
    response = await client.post(
        f"{TENANT}/sources/{source_id}/runs", json={"files": ["a.csv"]}, headers=operator
    )
    assert_bad_request(response, None)
    assert response.json()["field"] == "files"


async def test_a_window_on_a_file_source_run_is_400(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    created = await client.post(f"{TENANT}/sources", json=sftp_source(), headers=operator)
    assert created.status_code == 201, created.text
    response = await client.post(
        f"{TENANT}/sources/{created.json()['id']}/runs",
        json={"trigger": "manual", "start": "2026-01-05", "end": "2026-01-05"},
        headers=operator,
    )
    assert_bad_request(response, None)
    assert response.json()["field"] == "start"


async def test_a_source_for_a_missing_tenant_is_404(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    response = await client.post(
        "/api/v1/tenants/ghost/sources", json=synthetic_source(), headers=operator
    )
    assert response.status_code == 404, response.text
    assert "ghost" in response.json()["detail"]


async def test_valid_input_still_passes(
    client: httpx.AsyncClient, operator: dict[str, str], source_id: str
) -> None:
    """The checks above reject only what is wrong (the controls of the tests above)."""
    ok = await client.post(
        f"{TENANT}/sources", json=sftp_source(timezone="Europe/Berlin"), headers=operator
    )
    assert ok.status_code == 201, ok.text
    today = date.today()
    run = await client.post(
        f"{TENANT}/sources/{source_id}/runs",
        json={"trigger": "backfill", "start": "2000-01-01", "end": "2000-01-02"},
        headers=operator,
    )
    assert run.status_code == 202, run.text
    assert today.year >= 2000
    patched = await client.patch(
        f"{TENANT}/sources/{source_id}",
        json={"schedule": {"interval_s": 60}, "config": {"seed": 2**31 - 1}},
        headers=operator,
    )
    assert patched.status_code == 200, patched.text
