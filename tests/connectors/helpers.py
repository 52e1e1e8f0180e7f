"""Running a connector directly (without the engine) the way the runner does."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from app.core.outbound import LOOPBACK_ALLOW, OutboundPolicy
from app.core.workers import WorkerPool
from app.modules.events.schema import LOAD_COLUMNS
from app.modules.ingestion.connectors.base import (
    Batch,
    DateWindow,
    ExtractContext,
    LedgerEntry,
    SourceContext,
)

# The test servers listen on loopback, which tenants may not reach unless allowed.
LOOPBACK = OutboundPolicy.from_allow_list(LOOPBACK_ALLOW)


def source_context(
    connector: Any,
    config: dict[str, Any],
    secrets: dict[str, Any] | None = None,
    *,
    executor: ThreadPoolExecutor | None = None,
    outbound: OutboundPolicy | None = None,
) -> SourceContext:
    return SourceContext(
        tenant_id="acme",
        source_id=uuid.uuid4(),
        config=msgspec.convert(config, connector.config_type),
        secrets=msgspec.convert(secrets or {}, connector.secrets_type),
        timezone="UTC",
        executor=executor,
        outbound=outbound or LOOPBACK,
    )


def extract_context(
    connector: Any,
    config: dict[str, Any],
    secrets: dict[str, Any] | None = None,
    *,
    window: DateWindow | None = None,
    executor: ThreadPoolExecutor | None = None,
    batch_rows: int = 50_000,
    is_cancelled: Callable[[], bool] = lambda: False,
    imported_files: Callable[[], Awaitable[dict[str, list[LedgerEntry]]]] | None = None,
    outbound: OutboundPolicy | None = None,
    workers: WorkerPool | None = None,
) -> ExtractContext:
    base = source_context(connector, config, secrets, executor=executor, outbound=outbound)
    return ExtractContext(
        tenant_id=base.tenant_id,
        source_id=base.source_id,
        config=base.config,
        secrets=base.secrets,
        timezone="UTC",
        executor=executor,
        workers=workers,
        window=window,
        batch_rows=batch_rows,
        is_cancelled=is_cancelled,
        imported_files=imported_files,
        outbound=base.outbound,
    )


async def collect(connector: Any, ctx: ExtractContext) -> list[Batch]:
    return [batch async for batch in connector.extract(ctx)]


_UNESCAPE = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}
_TYPES: dict[str, Callable[[str], Any]] = {
    "occurred_at": datetime.fromisoformat,
    "engagement_time_msec": int,
    "session_engaged": lambda v: v == "t",
    "revenue": Decimal,
    "properties": json.loads,
}


def _copy_value(text: str) -> str | None:
    if text == "\\N":
        return None
    out, i = [], 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in _UNESCAPE:
            out.append(_UNESCAPE[pair])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def copy_rows_of(payload: bytes) -> list[dict[str, Any]]:
    """COPY text lines prepared by the workers, decoded back into typed canonical rows."""
    rows = []
    for line in payload.decode().split("\n")[:-1]:
        values = [_copy_value(v) for v in line.split("\t")]
        row = dict(zip(LOAD_COLUMNS, values, strict=True))
        del row["tenant_id"], row["source_id"]
        rows.append({k: (v if v is None else _TYPES.get(k, str)(v)) for k, v in row.items()})
    return rows


def rows_of(batch: Batch) -> list[dict[str, Any]]:
    if batch.prepared is not None:
        return copy_rows_of(batch.prepared.copy)
    return [dict(row) for row in batch.rows]


def rejects_of(batch: Batch) -> list[Any]:
    return [*batch.rejects, *(batch.prepared.rejects if batch.prepared else [])]


def all_rows(batches: list[Batch]) -> list[dict[str, Any]]:
    return [row for b in batches for row in rows_of(b)]
