"""The ingestion module's public functions: sources, source tests, runs, quarantine.

Stateless; the session is passed in and only flushed (the request commits), except that
``check_source`` ends the request's read transaction before it talks to the outside
world. One file per subject; callers use this package (``service.create_run(...)``).
"""

from __future__ import annotations

from app.modules.ingestion.service.connectivity import check_source
from app.modules.ingestion.service.quarantine import list_quarantine
from app.modules.ingestion.service.runs import (
    EARLIEST_DATE,
    MAX_WINDOW_DAYS,
    cancel_run,
    create_run,
    get_run,
    list_runs,
)
from app.modules.ingestion.service.sources import (
    create_source,
    delete_source,
    get_source,
    list_sources,
    reencrypt_secrets,
    update_source,
)

__all__ = [
    "EARLIEST_DATE",
    "MAX_WINDOW_DAYS",
    "cancel_run",
    "check_source",
    "create_run",
    "create_source",
    "delete_source",
    "get_run",
    "get_source",
    "list_quarantine",
    "list_runs",
    "list_sources",
    "reencrypt_secrets",
    "update_source",
]
