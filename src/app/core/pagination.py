"""The one pagination style of the API: keyset cursors.

Every list endpoint takes ``limit`` and ``cursor`` query parameters and answers
``{"items": [...], "next_cursor": "..."}``; ``next_cursor`` is null on the last page and
is passed back unchanged as ``cursor`` for the next one. A cursor is the sort key of the
last item of the page (not a position), so rows added or removed meanwhile never shift a
page. Cursors are opaque to clients; one that is not ours is a 400 on ``cursor``.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from app.core.errors import Invalid

_NOT_OURS = "cursor is not one this API returned"


def time_id_cursor(at: datetime, item_id: uuid.UUID) -> str:
    """The cursor after an item of a list sorted by (time, id)."""
    return f"{at.isoformat()}~{item_id}"


def parse_time_id_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (time, id) key of :func:`time_id_cursor`; Invalid (400) for anything else."""
    try:
        stamp, _, item_id = cursor.partition("~")
        at = datetime.fromisoformat(stamp)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at, uuid.UUID(item_id)
    except ValueError:
        raise Invalid(_NOT_OURS, field="cursor") from None


def int_cursor(item_id: int) -> str:
    """The cursor after an item of a list sorted by an integer id."""
    return str(item_id)


def parse_int_cursor(cursor: str) -> int:
    """The id of :func:`int_cursor`; Invalid (400) for anything else (bigint range)."""
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 19:
        raise Invalid(_NOT_OURS, field="cursor")
    value = int(cursor)
    if value > 2**63 - 1:
        raise Invalid(_NOT_OURS, field="cursor")
    return value
