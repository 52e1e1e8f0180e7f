"""The auth module's typed state and dependencies.

- ``principal`` for handlers (``principal: Principal``), authenticated by the app guard;
- typed accessors for what the auth lifespan hook keeps on ``app.state`` (the
  authenticator and the auth counters). Guards get no dependency injection, so the guard
  reads the authenticator through :func:`authenticator_of` - never a bare
  ``getattr(app.state, ...)`` - and a wrong type there is an error, not a silent ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from litestar import Request
from litestar.datastructures import State
from prometheus_client import Counter

from app.modules.auth.errors import missing_token
from app.modules.auth.key_sources import OidcDiscovery
from app.modules.auth.principal import Principal
from app.modules.auth.service import Authenticator

# Where the guard caches the caller on the connection's scope state.
PRINCIPAL_KEY = "pulse.principal"
# Keys of app.state owned by this module (set only by its lifespan hook).
AUTHENTICATOR_KEY = "auth"
METRICS_KEY = "auth_metrics"


@dataclass(frozen=True)
class AuthMetrics:
    jwks_fetches: Counter
    rejections: Counter


T = TypeVar("T")


def _typed(state: State, key: str, type_: type[T]) -> T | None:
    value = state.get(key)
    if value is None or isinstance(value, type_):
        return value
    raise TypeError(f"app.state.{key} is a {type(value).__name__}, not a {type_.__name__}")


def authenticator_of(state: State) -> Authenticator | None:
    """The app's authenticator; None before the auth hook started it (every token is then
    refused with 503)."""
    return _typed(state, AUTHENTICATOR_KEY, Authenticator)


def set_authenticator(state: State, authenticator: Authenticator) -> None:
    state[AUTHENTICATOR_KEY] = authenticator


def auth_metrics_of(state: State) -> AuthMetrics | None:
    """The auth counters on the app's registry; None before the auth hook registered them."""
    return _typed(state, METRICS_KEY, AuthMetrics)


def set_auth_metrics(state: State, metrics: AuthMetrics) -> None:
    state[METRICS_KEY] = metrics


def issuer_discovery(state: State) -> OidcDiscovery | None:
    """The configured issuer's discovery document, shared with the key cache; None when no
    issuer is configured (or before the auth hook started)."""
    authenticator = authenticator_of(state)
    return None if authenticator is None else authenticator.discovery


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """The caller, as authenticated by the app guard before the handler runs."""
    principal = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal):
        # Only a public route can get here; it should not ask who is calling.
        raise missing_token()
    return principal
