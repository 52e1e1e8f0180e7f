"""What the log says: tracebacks with the exception class and the request id, never a
secret from a frame's local variables. The real handler's output is captured, in both
formats, through ``configure_logging(..., stream=...)``."""

from __future__ import annotations

import io
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from litestar import Litestar

from app.core import logging as logging_module
from app.core.logging import configure_logging
from app.core.settings import Settings
from app.modules.tenants import service as tenants_service
from tests.conftest import make_settings
from tests.fixtures.ingestion import IngestKit, fast_settings, wait_until
from tests.fixtures.oidc import AuthHeaders
from tests.fixtures.sftp import SftpServer

BASE = "/api/v1/tenants/acme"


class LogCapture:
    def __init__(self, log_format: str) -> None:
        self.format = log_format
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    async def wait_for(self, *needles: str) -> str:
        """The output once it holds every needle (the listener thread writes it)."""

        async def written() -> bool:
            return all(n in self.text for n in needles)

        await wait_until(written, timeout_s=30)
        return self.text

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.startswith("{")]


@pytest.fixture
def settings(database_url: str) -> Settings:
    return fast_settings(database_url, log_level="INFO")


@pytest.fixture(params=["console", "json"])
def captured(
    request: pytest.FixtureRequest, app: Litestar, database_url: str
) -> Iterator[LogCapture]:
    """The app's real log handler, writing to a buffer (after create_app configured it)."""
    capture = LogCapture(request.param)
    configure_logging(
        fast_settings(database_url, log_level="INFO", log_format=request.param),
        stream=capture.stream,
    )
    try:
        yield capture
    finally:
        configure_logging(make_settings(database_url))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_failing_sftp_run_logs_its_traceback_without_the_password_or_key(
    client: httpx.AsyncClient,
    captured: LogCapture,
    ingest: IngestKit,
    auth_headers: AuthHeaders,
    sftp_server: SftpServer,
) -> None:
    await ingest.tenant()
    admin = auth_headers(tenant="acme", role="admin")
    password = f"pw-{uuid.uuid4().hex}"
    private_key = sftp_server.private_key_text()
    source = {
        "kind": "sftp",
        "name": "drops",
        # Nobody listens there: the run fails (transiently, so with its traceback).
        "config": sftp_server.config(port=_closed_port()),
        "secrets": {"password": password, "private_key": private_key},
    }
    created = await client.post(f"{BASE}/sources", json=source, headers=admin)
    assert created.status_code == 201, created.text
    accepted = await client.post(
        f"{BASE}/sources/{created.json()['id']}/runs", json={"trigger": "manual"}, headers=admin
    )
    assert accepted.status_code == 202, accepted.text
    run_url = f"{BASE}/runs/{accepted.json()['id']}"

    async def failed() -> bool:
        return bool((await client.get(run_url, headers=admin)).json()["status"] == "failed")

    await wait_until(failed, timeout_s=60)
    output = await captured.wait_for("run.error", "Traceback (most recent call last)")
    assert password not in output
    assert private_key not in output
    key_lines = [line for line in private_key.splitlines() if "PRIVATE KEY" not in line]
    assert key_lines
    for line in key_lines:
        assert line[:40] not in output


class ForcedFault(RuntimeError):
    """An error no route expects."""


async def test_an_unhandled_error_is_logged_with_its_class_traceback_and_request_id(
    client: httpx.AsyncClient,
    captured: LogCapture,
    auth_headers: AuthHeaders,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ForcedFault("the tenant store fell over")

    monkeypatch.setattr(tenants_service, "get_tenant", broken)
    request_id = uuid.uuid4().hex
    response = await client.get(
        BASE, headers={**auth_headers(tenant="acme", role="viewer"), "X-Request-ID": request_id}
    )
    assert response.status_code == 500
    assert response.json()["request_id"] == request_id
    output = await captured.wait_for("http.unhandled_error", "ForcedFault", request_id)
    assert "Traceback (most recent call last)" in output
    assert "in broken" in output  # the frame that raised
    if captured.format == "json":
        [line] = [e for e in captured.json_lines() if e["event"] == "http.unhandled_error"]
        assert line["request_id"] == request_id
        assert line["exc_type"] == f"{__name__}.ForcedFault"
        assert line["exception"].startswith("Traceback (most recent call last)")
        assert "ForcedFault: the tenant store fell over" in line["exception"]
        assert line["level"] == "error"
    else:
        [line] = [x for x in output.splitlines() if "http.unhandled_error" in x]
        assert f"request_id={request_id}" in line
        assert f"exc_type={__name__}.ForcedFault" in line


def test_an_event_below_the_level_runs_no_processor(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filtering comes first: a debug line on a hot path costs a level check, not the
    processor chain (time stamp, context variables, exception capture)."""
    seen: list[str] = []

    def spy(_logger: Any, _method: str, event_dict: Any) -> Any:
        seen.append(event_dict["event"])
        return event_dict

    monkeypatch.setattr(
        "app.core.logging._SHARED_PROCESSORS",
        [spy, *logging_module._SHARED_PROCESSORS],
    )
    configure_logging(make_settings(database_url, log_level="WARNING"))
    try:
        log = structlog.get_logger("app.test.filtering")
        log.debug("quiet.event")
        log.info("quiet.too")
        log.warning("loud.event")
        assert seen == ["loud.event"]
    finally:
        monkeypatch.undo()
        configure_logging(make_settings(database_url))
