"""The OpenAPI contract, fuzzed: a bounded schemathesis run against a real server.

Pulse runs as ``python -m app serve`` (uvicorn) in a subprocess on a loopback port,
against the test database and the test OIDC issuer, with a seeded tenant and source so
tenant routes are reached. Every operation gets ``MAX_EXAMPLES`` generated requests that
fit the schema (sent as an operator, a tenant admin and a tenant viewer) and
``MAX_EXAMPLES`` that do not (sent as an operator). Each answer must not be a server
error and must match the document: status code, content type and body schema.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import make_settings
from tests.fixtures.oidc import AUDIENCE, AUTH_SETTINGS, TokenFor, default_issuer

# Generated requests per operation and generation mode: ~30 operations x (3 roles x 4
# valid + 4 invalid) is about 500 requests, well under two minutes here.
MAX_EXAMPLES = 4
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
TENANT = "acme"
START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def live_server(database_url: str, clean_tables: None, tmp_path: Path) -> Iterator[str]:
    """``python -m app serve`` on a free loopback port; yields its base URL. It connects
    as the tests' application role (row-level security applies) and grants operator
    through the test issuer's explicit claim, like every other test app."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(
        PULSE_ENV="test",
        PULSE_HOST="127.0.0.1",
        PULSE_PORT=str(port),
        PULSE_DATABASE_URL=make_settings(database_url).database_url or "",
        PULSE_SECRET_KEY="test-secret-key-not-for-production",
        PULSE_LOG_LEVEL="WARNING",
        PULSE_DB_POOL_SIZE="5",
        PULSE_OIDC_ISSUER=default_issuer().issuer,
        PULSE_OIDC_AUDIENCE=AUDIENCE,
        **{f"PULSE_{name.upper()}": str(value) for name, value in AUTH_SETTINGS.items()},
    )
    log = (tmp_path / "server.log").open("wb")
    # cwd: a directory without a .env file, so only the variables above configure it.
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve"], env=env, cwd=tmp_path, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, server, tmp_path / "server.log")
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


def _wait_ready(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited at start-up:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling a condition under a deadline
    pytest.fail(f"the server was not ready within {START_TIMEOUT_S} s")


def _seed(base: str, operator: dict[str, str]) -> str:
    """A tenant and a small synthetic source for the fuzzed tenant routes to reach."""
    with httpx.Client(base_url=base, headers=operator, timeout=10) as http:
        tenant = http.post("/api/v1/tenants", json={"id": TENANT, "name": "Acme"})
        assert tenant.status_code == 201, tenant.text
        source = http.post(
            f"/api/v1/tenants/{TENANT}/sources",
            json={"kind": "synthetic", "name": "demo", "config": {"sessions_per_day": 1}},
        )
        assert source.status_code == 201, source.text
        return str(source.json()["id"])


def _aim(case: Any, source_id: str) -> None:
    """Point most requests at the seeded tenant and source, so they get past the 404.

    Deletes keep their generated ids (they would remove the seed), and so do changes
    to the source (a generated config could start an hours-long import).
    """
    params = case.path_parameters
    if not params:
        return
    deleting = case.method.upper() == "DELETE"
    if "tenant_id" in params and not deleting:
        params["tenant_id"] = TENANT
    if "source_id" in params and not deleting and case.method.upper() != "PATCH":
        params["source_id"] = source_id


# About a minute here; the margin is for a machine busy with other suites.
@pytest.mark.timeout(300)
def test_every_operation_keeps_its_contract(live_server: str, token_for: TokenFor) -> None:
    roles = {
        "operator": {"Authorization": f"Bearer {token_for(None, 'operator')}"},
        "admin": {"Authorization": f"Bearer {token_for(TENANT, 'admin')}"},
        "viewer": {"Authorization": f"Bearer {token_for(TENANT, 'viewer')}"},
    }
    source_id = _seed(live_server, roles["operator"])
    schema = schemathesis.openapi.from_url(f"{live_server}/schema/openapi.json")
    failures: list[str] = []
    sent = {"requests": 0}

    def check(case: Any, role: str) -> None:
        _aim(case, source_id)
        response = case.call(base_url=live_server, headers=roles[role], timeout=15)
        sent["requests"] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (Exception, FailureGroup) as exc:  # collected, all reported at the end
            found = exc.exceptions if isinstance(exc, FailureGroup) else (exc,)
            detail = "; ".join(str(e) for e in found)[:1500]
            failures.append(
                f"{role} {case.method} {response.request.url} -> {response.status_code}: {detail}"
            )

    bounded = settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [o.label for o in operations]
    for operation in operations:

        @bounded
        @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        def valid(case: Any) -> None:
            for role in roles:
                check(case, role)

        @bounded
        @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        def invalid(case: Any) -> None:
            check(case, "operator")

        valid()
        invalid()

    assert sent["requests"] >= len(operations) * MAX_EXAMPLES
    assert not failures, "\n\n".join(failures[:20]) + f"\n\n({len(failures)} failures)"
