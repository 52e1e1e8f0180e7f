"""Running a connector directly (without the engine) the way the runner does."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from app.core.outbound import LOOPBACK_ALLOW, OutboundPolicy
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
) -> ExtractContext:
    base = source_context(connector, config, secrets, executor=executor, outbound=outbound)
    return ExtractContext(
        tenant_id=base.tenant_id,
        source_id=base.source_id,
        config=base.config,
        secrets=base.secrets,
        timezone="UTC",
        executor=executor,
        window=window,
        batch_rows=batch_rows,
        is_cancelled=is_cancelled,
        imported_files=imported_files,
        outbound=base.outbound,
    )


async def collect(connector: Any, ctx: ExtractContext) -> list[Batch]:
    return [batch async for batch in connector.extract(ctx)]


def all_rows(batches: list[Batch]) -> list[dict[str, Any]]:
    return [dict(row) for b in batches for row in b.rows]
