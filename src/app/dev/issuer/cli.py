"""``python -m app token``: mint a development token and print only the token."""

from __future__ import annotations

import argparse
import sys

from app.core.settings import Settings, SettingsError
from app.dev.issuer import DevIssuer, DevIssuerRefused


def token_command(settings: Settings, args: argparse.Namespace) -> int:
    """Print a development access token on stdout (nothing else), or refuse on stderr."""
    try:
        issuer = DevIssuer.from_settings(settings)
    except DevIssuerRefused as exc:
        raise SettingsError([str(exc)]) from exc
    tenants = list(args.tenant or ["demo"])
    if args.ttl < 60 or args.ttl > 30 * 86400:
        raise SettingsError(["--ttl must be between 60 seconds and 30 days"])
    try:
        # An operator token carries the operator grant (PULSE_OIDC_OPERATOR_CLAIM/_VALUE, or
        # the development issuer's own claim), not a role name.
        token = issuer.mint(tenants=tenants, role=args.role, subject=args.subject, ttl_s=args.ttl)
    except DevIssuerRefused as exc:
        raise SettingsError([str(exc)]) from exc
    sys.stdout.write(token + "\n")
    return 0
