"""Testing a source's connection and credentials (``POST .../sources/{id}/test``).

It ends the request's read transaction (a rollback: nothing was written) before it talks
to the outside world, so no pooled connection waits on a remote server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.crypto import DecryptionFailed, SecretBox
from app.core.outbound import OutboundPolicy
from app.modules.ingestion import schemas
from app.modules.ingestion.connectors.base import SourceContext
from app.modules.ingestion.secrets import open_secrets
from app.modules.ingestion.service.sources import _connector, _get_source, _tenant_timezone

log = structlog.get_logger("app.ingestion")


async def check_source(
    session: AsyncSession,
    box: SecretBox,
    tenant_id: str,
    source_id: uuid.UUID,
    *,
    timeout_s: float,
    http: httpx.AsyncClient | None = None,
    executor: ThreadPoolExecutor | None = None,
    outbound: OutboundPolicy | None = None,
) -> schemas.SourceTestResult:
    """Run the connector's connectivity check within ``timeout_s``; never raises for it."""
    source = await _get_source(session, tenant_id, source_id)
    kind, raw_config, ciphertext = source.kind, source.config, source.secrets_ciphertext
    tz_name = await _tenant_timezone(session, tenant_id)
    # Do not hold a pooled connection while talking to the outside world.
    await session.rollback()
    started = time.perf_counter()
    checks: list[schemas.SourceTestCheck] = []
    connector = _connector(kind)
    try:
        config = msgspec.convert(raw_config, connector.config_type)
        secrets = open_secrets(
            box,
            connector,
            tenant_id=tenant_id,
            source_id=source_id,
            ciphertext=ciphertext,
        )
        ctx = SourceContext(
            tenant_id=tenant_id,
            source_id=source_id,
            config=config,
            secrets=secrets,
            timezone=tz_name,
            http=http,
            executor=executor,
            outbound=outbound,
        )
        async with asyncio.timeout(timeout_s):
            result = await connector.test(ctx)
        ok = result.ok
        checks = [
            schemas.SourceTestCheck(name=c.name, ok=c.ok, detail=c.detail) for c in result.checks
        ]
    except TimeoutError:
        ok = False
        checks.append(
            schemas.SourceTestCheck(
                name="timeout", ok=False, detail=f"no answer within {timeout_s:g} s"
            )
        )
    except (msgspec.ValidationError, DecryptionFailed) as exc:
        ok = False
        checks.append(schemas.SourceTestCheck(name="configuration", ok=False, detail=str(exc)))
    except Exception as exc:
        ok = False
        log.warning(
            "source.test_failed",
            tenant_id=tenant_id,
            source_id=str(source_id),
            error_class=type(exc).__name__,
            error=str(exc)[:500],
        )
        # Not str(exc): an unclassified error may carry what the remote answered.
        checks.append(
            schemas.SourceTestCheck(
                name="connection",
                ok=False,
                detail=f"unexpected error ({type(exc).__name__}); the server log has details",
            )
        )
    return schemas.SourceTestResult(
        ok=ok, duration_ms=int((time.perf_counter() - started) * 1000), checks=checks
    )
