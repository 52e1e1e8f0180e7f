"""Start-up of the auth module: build the authenticator, prefetch keys in the background."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import structlog
from litestar import Litestar
from prometheus_client import Counter

from app.core.lifespan import ConfigurationError
from app.core.settings import Settings
from app.modules.auth.claims import ClaimMapping
from app.modules.auth.deps import AuthMetrics, auth_metrics_of, set_auth_metrics, set_authenticator
from app.modules.auth.introspection import Introspector
from app.modules.auth.jwks import JwksCache
from app.modules.auth.key_sources import HttpKeySource, StaticKeySource
from app.modules.auth.keys import KeySet
from app.modules.auth.service import Authenticator
from app.modules.auth.tokens import TokenCache, TokenValidator

log = structlog.get_logger("app.auth")

# Bound for IdP calls: never longer than the app-wide HTTP timeout, never more than 5 s.
IDP_TIMEOUT_CAP_S = 5.0


def build_authenticator(settings: Settings, state: Any) -> Authenticator:
    """The authenticator for a configured issuer and/or introspection endpoint."""
    mapping = ClaimMapping.from_settings(settings)
    timeout_s = min(settings.http_timeout_s, IDP_TIMEOUT_CAP_S)
    issuer = settings.oidc_issuer
    metrics = auth_metrics(state)
    keys = None
    validator = None
    discovery = None
    if issuer:
        source = HttpKeySource(state.http, issuer, timeout_s=timeout_s)
        discovery = source.discovery
        keys = JwksCache(
            source,
            issuer=issuer,
            cooldown_s=settings.oidc_jwks_cooldown_s,
            max_stale_s=settings.oidc_jwks_max_stale_s,
            on_fetch=lambda outcome: metrics.jwks_fetches.labels(outcome=outcome).inc(),
        )
        validator = _validator(settings, issuer, keys, mapping)
    introspector = None
    if (
        settings.oidc_introspection_url
        and settings.oidc_introspection_client_id
        and settings.oidc_introspection_client_secret
    ):
        introspector = Introspector(
            state.http,
            url=settings.oidc_introspection_url,
            client_id=settings.oidc_introspection_client_id,
            client_secret=settings.oidc_introspection_client_secret,
            mapping=mapping,
            audience=settings.oidc_audience,
            issuer=issuer,
            cache_s=settings.oidc_introspection_cache_s,
            timeout_s=timeout_s,
        )
    return Authenticator(
        issuer=issuer,
        validator=validator,
        keys=keys,
        introspector=introspector,
        discovery=discovery,
    )


def _validator(
    settings: Settings, issuer: str, keys: JwksCache, mapping: ClaimMapping
) -> TokenValidator:
    return TokenValidator(
        issuer=issuer,
        audience=settings.oidc_audience,
        algorithms=frozenset(a.strip() for a in settings.oidc_algorithms.split(",") if a.strip()),
        leeway_s=settings.oidc_leeway_s,
        strict_typ=settings.oidc_strict_typ,
        keys=keys,
        mapping=mapping,
        cache=TokenCache(settings.oidc_token_cache_size),
    )


def auth_metrics(state: Any) -> AuthMetrics:
    """The auth counters on the app's registry (registered once per app)."""
    existing = auth_metrics_of(state)
    if existing is not None:
        return existing
    registry = state.metrics.registry
    metrics = AuthMetrics(
        jwks_fetches=Counter(
            "pulse_oidc_jwks_fetches", "JWKS fetches by outcome.", ["outcome"], registry=registry
        ),
        rejections=Counter(
            "pulse_auth_rejections",
            "Requests refused by authentication, by reason.",
            ["reason"],
            registry=registry,
        ),
    )
    set_auth_metrics(state, metrics)
    return metrics


class LocalIssuer(Protocol):
    """An issuer running in this process (the development one, started by ``app.dev``
    before this module's hook): its tokens are checked against its keys, no HTTP."""

    @property
    def issuer(self) -> str: ...

    @property
    def key_set(self) -> KeySet: ...

    @property
    def mapping(self) -> ClaimMapping: ...


async def _dev_authenticator(settings: Settings, state: Any) -> Authenticator:
    dev: LocalIssuer | None = getattr(state, "dev_issuer", None)
    if dev is None:
        raise ConfigurationError(
            "the development issuer did not start (app.dev is wired only by create_app"
            " in development); set PULSE_OIDC_ISSUER"
        )
    mapping = dev.mapping
    keys = JwksCache(
        StaticKeySource(dev.key_set),
        issuer=dev.issuer,
        cooldown_s=settings.oidc_jwks_cooldown_s,
        max_stale_s=settings.oidc_jwks_max_stale_s,
    )
    await keys.refresh()
    log.warning(
        "auth.dev_issuer_running",
        issuer=dev.issuer,
        hint="make token TENANT=demo ROLE=admin",
    )
    validator = _validator(settings, dev.issuer, keys, mapping)
    return Authenticator(issuer=dev.issuer, validator=validator, keys=keys)


@asynccontextmanager
async def auth_lifespan(app: Litestar) -> AsyncIterator[None]:
    state: Any = app.state
    settings: Settings = state.settings
    auth_metrics(state)
    if settings.runs_dev_issuer:
        authenticator = await _dev_authenticator(settings, state)
    elif settings.oidc_issuer or settings.oidc_introspection_url:
        authenticator = build_authenticator(settings, state)
    elif settings.is_production:
        raise ConfigurationError(
            "PULSE_OIDC_ISSUER is required when PULSE_ENV=production"
            " (the development issuer never runs in production)"
        )
    else:
        log.warning("auth.no_issuer", env=settings.env, effect="every token is refused with 503")
        authenticator = Authenticator(issuer=None, validator=None, keys=None)
    set_authenticator(state, authenticator)
    refresher = None
    if authenticator.keys is not None and not settings.runs_dev_issuer:
        # The first run is the prefetch: start-up never waits for (or fails on) the IdP.
        refresher = state.tasks.spawn(authenticator.keys.run(), name="oidc-jwks-refresh")
    try:
        yield
    finally:
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        await authenticator.close()
