"""Every 400 says what was wrong in the user's words: no Python key names, no regexes."""

from __future__ import annotations

import httpx
import pytest

from app.core.settings import Settings
from tests.fixtures.ingestion import IngestKit, fast_settings
from tests.fixtures.oidc import AuthHeaders

BASE = "/api/v1/tenants/acme"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return fast_settings(database_url)


@pytest.fixture
async def admin(ingest: IngestKit, auth_headers: AuthHeaders) -> dict[str, str]:
    await ingest.tenant()
    return auth_headers(tenant="acme", role="admin")


async def test_starting_a_run_without_a_body_says_what_to_send(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    source = {"kind": "synthetic", "name": "demo", "config": {"sessions_per_day": 1}}
    created = await client.post(f"{BASE}/sources", json=source, headers=admin)
    assert created.status_code == 201, created.text
    answer = await client.post(f"{BASE}/sources/{created.json()['id']}/runs", headers=admin)
    assert answer.status_code == 400, answer.text
    problem = answer.json()
    assert "'data'" not in answer.text
    assert "no JSON body" in problem["detail"]
    assert problem["errors"][0]["message"].startswith("the request has no JSON body")


async def test_a_bad_email_address_is_explained_in_words(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    answer = await client.put(
        f"{BASE}/notifications", json={"recipients": ["not an address"]}, headers=admin
    )
    assert answer.status_code == 400, answer.text
    assert "regex" not in answer.text
    assert "^" not in answer.text
    problem = answer.json()
    assert problem["detail"] == (
        "Invalid request: recipients[0] must be an email address such as ops@example.com."
    )
    assert problem["errors"][0]["key"] == "recipients[0]"
