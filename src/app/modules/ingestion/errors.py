"""Which failures are worth retrying."""

from __future__ import annotations

import asyncio

import msgspec
from sqlalchemy import exc as sa_exc

from app.core.crypto import DecryptionFailed
from app.core.errors import is_database_unavailable
from app.modules.ingestion.connectors.base import TerminalError, TransientError

# serialization_failure, deadlock_detected, lock_not_available, query_canceled (timeouts),
# and unique_violation: the load itself never violates a key (ON CONFLICT DO NOTHING), so
# one comes from a race with a concurrent transaction, which a retry resolves.
_TRANSIENT_SQLSTATES = ("40001", "40P01", "55P03", "57014", "23505")


def is_transient(exc: BaseException) -> bool:
    """True when a later attempt may succeed; unknown errors count as transient."""
    if isinstance(exc, TerminalError | DecryptionFailed | msgspec.ValidationError):
        return False
    if isinstance(exc, TransientError | TimeoutError | asyncio.TimeoutError | OSError):
        return True
    if is_database_unavailable(exc):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if isinstance(sqlstate, str):
            # Data or schema errors (22, 23, 42) will fail the same way next time.
            return sqlstate in _TRANSIENT_SQLSTATES or not sqlstate.startswith(("22", "23", "42"))
    return True


def describe(exc: BaseException) -> tuple[str, str]:
    """(class, message) for the run record: short, and never the SQL or parameters."""
    if isinstance(exc, sa_exc.DBAPIError):
        orig = exc.orig
        return type(orig).__name__ if orig else type(exc).__name__, str(orig).split("\n")[0][:500]
    message = str(exc) or type(exc).__name__
    return type(exc).__name__, message[:1000]
