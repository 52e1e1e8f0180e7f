"""Auth failures and how they reach the caller (RFC 6750 challenges)."""

from __future__ import annotations

from app.core.errors import Forbidden, Unauthorized, Unavailable

REALM = "pulse"


class InvalidToken(Exception):
    """The token is not acceptable. ``description`` is safe to show the caller."""

    def __init__(self, description: str, *, reason: str = "invalid") -> None:
        super().__init__(description)
        self.description = description
        self.reason = reason


class IdentityProviderUnavailable(Exception):
    """The IdP cannot be reached and nothing usable is cached: answer 503, not 401."""


def _quoted(text: str) -> str:
    # error_description is a quoted-string limited to printable ASCII without " and \.
    return "".join(c for c in text if 0x20 <= ord(c) <= 0x7E and c not in '"\\')


def missing_token() -> Unauthorized:
    return Unauthorized(
        "This route needs an access token: send Authorization: Bearer <token>.",
        headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
    )


def invalid_token(description: str) -> Unauthorized:
    challenge = (
        f'Bearer realm="{REALM}", error="invalid_token", error_description="{_quoted(description)}"'
    )
    return Unauthorized(description, headers={"WWW-Authenticate": challenge})


def invalid_request(description: str) -> Unauthorized:
    challenge = (
        f'Bearer realm="{REALM}", error="invalid_request", '
        f'error_description="{_quoted(description)}"'
    )
    return Unauthorized(description, headers={"WWW-Authenticate": challenge})


def insufficient_role(role: str) -> Forbidden:
    return Forbidden(
        f"This route needs the {role} role.",
        headers={
            "WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope", '
            f'error_description="needs the {role} role"'
        },
    )


def idp_unavailable() -> Unavailable:
    # Deliberately vague: the cause (DNS, TLS, timeouts) is in the log, not for the caller.
    return Unavailable(
        "The identity provider cannot be reached and no usable keys are cached; try again shortly.",
        headers={"Retry-After": "5"},
    )
