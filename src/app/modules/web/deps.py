"""Typed dependencies of the web routes."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import Provide

from app.modules.auth import issuer_discovery
from app.modules.web.assets import Asset
from app.modules.web.service import IssuerSources


def provide_web_assets(state: State) -> dict[str, Asset]:
    """The static files the lifespan read into memory (none before it ran)."""
    assets: dict[str, Asset] = getattr(state, "web_assets", {})
    return assets


def provide_issuer_sources(state: State) -> IssuerSources:
    """Where sign-in endpoints come from: the in-process development issuer (app.dev
    starts it in development) or the configured issuer's discovery document (auth)."""
    dev = getattr(state, "dev_issuer", None)
    return IssuerSources(
        development_issuer=dev.issuer if dev is not None else None,
        discovery=issuer_discovery(state),
    )


dependencies = {
    "web_assets": Provide(provide_web_assets, sync_to_thread=False),
    "issuer_sources": Provide(provide_issuer_sources, sync_to_thread=False),
}
