"""A loopback OpenID Connect issuer for the benchmark: discovery, JWKS, introspection.

A real RSA key pair signs the tokens Pulse validates locally; RFC 7662 introspection
answers after ``introspection_delay_s`` (300 ms: a slow IdP). It runs on its own threads
(``ThreadingHTTPServer``), so a slow answer never holds up the benchmark's event loop.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

AUDIENCE = "pulse"
CLIENT_ID = "pulse-introspector"
CLIENT_SECRET = secrets.token_urlsafe(16)
KID = "bench-rsa-1"


class Issuer:
    def __init__(self, *, introspection_delay_s: float = 0.3) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=KID, use="sig", alg="RS256")
        self.jwks = {"keys": [jwk]}
        self.introspection_delay_s = introspection_delay_s
        self.opaque: dict[str, dict[str, Any]] = {}
        self.introspections = 0
        self.lock = threading.Lock()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                issuer.get(self)

            def do_POST(self) -> None:
                issuer.post(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.issuer = self.url + "/realms/bench"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def introspection_url(self) -> str:
        return self.issuer + "/introspect"

    def claims(self, tenants: list[str], role: str, ttl_s: int) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.issuer,
            "sub": f"bench-{role}",
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
            "tenant_id": tenants,
            # operator is not a role name: Pulse grants it through PULSE_OIDC_OPERATOR_CLAIM.
            **(
                {"roles": [], "pulse_platform": "operator"}
                if role == "operator"
                else {"roles": [role]}
            ),
        }

    def token(self, tenants: list[str], role: str = "admin", ttl_s: int = 4 * 3600) -> str:
        """A signed JWT access token Pulse validates locally against the JWKS."""
        return jwt.encode(
            self.claims(tenants, role, ttl_s),
            self.key,
            algorithm="RS256",
            headers={"kid": KID, "typ": "at+jwt"},
        )

    def opaque_token(self, tenants: list[str], role: str = "viewer", ttl_s: int = 4 * 3600) -> str:
        """An opaque token only introspection can resolve."""
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.opaque[token] = {"active": True, **self.claims(tenants, role, ttl_s)}
        return token

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Cache-Control", "max-age=3600")
        h.end_headers()
        h.wfile.write(data)

    def get(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        if path == "/realms/bench/.well-known/openid-configuration":
            self._send(
                h,
                200,
                {
                    "issuer": self.issuer,
                    "jwks_uri": self.issuer + "/jwks",
                    "introspection_endpoint": self.introspection_url,
                },
            )
        elif path == "/realms/bench/jwks":
            self._send(h, 200, self.jwks)
        else:
            self._send(h, 404, {"error": "not_found"})

    def post(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        form = parse_qs(h.rfile.read(length).decode()) if length else {}
        if h.path.split("?")[0] != "/realms/bench/introspect":
            self._send(h, 404, {"error": "not_found"})
            return
        time.sleep(self.introspection_delay_s)  # the slow IdP (its own thread)
        token = (form.get("token") or [""])[0]
        with self.lock:
            self.introspections += 1
            body = self.opaque.get(token, {"active": False})
        self._send(h, 200, body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
