"""Sign-in settings for a real identity provider: the dashboard learns the endpoints from
the issuer's discovery document (fetched by Pulse, cached) and allows only them in its CSP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import make_settings, serve_in_process


class _Discovery(BaseHTTPRequestHandler):
    documents: dict[str, dict[str, Any]] = {}
    fetches = 0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        document = self.documents.get(path.removesuffix("/.well-known/openid-configuration"))
        if document is None or not path.endswith("/.well-known/openid-configuration"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        type(self).fetches += 1
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def idp() -> Iterator[str]:
    """A loopback IdP serving discovery for /full (code flow) and /partial (no endpoints)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discovery)
    server.daemon_threads = True
    url = f"http://127.0.0.1:{server.server_address[1]}"
    _Discovery.fetches = 0
    _Discovery.documents = {
        "/full": {
            "issuer": url + "/full",
            "authorization_endpoint": "https://login.example.com/authorize",
            "token_endpoint": "https://login.example.com/oauth/token",
            "end_session_endpoint": "https://login.example.com/logout",
        },
        "/partial": {"issuer": url + "/partial"},
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url
    server.shutdown()
    server.server_close()


async def test_real_issuer_endpoints_come_from_discovery_and_shape_the_csp(
    database_url: str, idp: str, clean_tables: None
) -> None:
    from app.main import create_app

    settings = make_settings(
        database_url, oidc_issuer=idp + "/full", oidc_web_client_id="pulse-web"
    )
    async with serve_in_process(create_app(settings)) as http:
        config = (await http.get("/web/config")).json()
        assert config == {
            "issuer": idp + "/full",
            "client_id": "pulse-web",
            "authorization_endpoint": "https://login.example.com/authorize",
            "token_endpoint": "https://login.example.com/oauth/token",
            "end_session_endpoint": "https://login.example.com/logout",
            "scope": "openid profile",
            "development": False,
        }
        page = await http.get("/")
        csp = page.headers["content-security-policy"]
        assert "connect-src 'self' https://login.example.com;" in csp
        assert "script-src 'self';" in csp
        # Cached: later pages and config requests do not fetch discovery again.
        fetched = _Discovery.fetches
        await http.get("/web/config")
        await http.get("/imports")
        assert _Discovery.fetches == fetched
        # The development issuer's sign-in does not exist next to a real IdP.
        assert (await http.get("/dev-issuer/authorize")).status_code == 404


async def test_issuer_without_code_flow_is_reported_and_the_page_still_loads(
    database_url: str, idp: str, clean_tables: None
) -> None:
    from app.main import create_app

    settings = make_settings(database_url, oidc_issuer=idp + "/partial")
    async with serve_in_process(create_app(settings)) as http:
        response = await http.get("/web/config")
        assert response.status_code == 503
        assert "authorization code flow" in response.json()["detail"]
        page = await http.get("/")
        assert page.status_code == 200
        assert "connect-src 'self';" in page.headers["content-security-policy"]
