"""What the browser is told about signing in."""

from __future__ import annotations

import msgspec


class SignInConfig(msgspec.Struct, kw_only=True, frozen=True):
    """OpenID Connect endpoints and the public client id of the dashboard."""

    issuer: str
    client_id: str
    authorization_endpoint: str
    token_endpoint: str
    end_session_endpoint: str | None
    scope: str
    # True with the development issuer (its picker lets anyone pick any user).
    development: bool
