"""Development-only code (app.dev) is wired by create_app only in development."""

from __future__ import annotations

from litestar.routes import HTTPRoute

from app.core.settings import Settings
from app.main import create_app

UNUSED_DB = "postgresql://unused/unused"


def _paths(settings: Settings) -> set[str]:
    return {route.path for route in create_app(settings).routes if isinstance(route, HTTPRoute)}


def test_the_development_issuer_routes_exist_only_in_development() -> None:
    development = _paths(Settings(env="development", database_url=UNUSED_DB))
    assert "/dev-issuer/jwks.json" in development
    assert "/dev-issuer/authorize" in development
    for env in ("test", "production"):
        paths = _paths(
            Settings(env=env, database_url=UNUSED_DB, oidc_issuer="https://idp.example/")
        )
        assert not any(p.startswith("/dev-issuer") or p.startswith("/dev/") for p in paths)
        assert "/api/v1/me" in paths
