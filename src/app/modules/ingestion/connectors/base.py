"""The connector protocol: how a kind of source turns into batches of canonical rows.

A connector is one object per kind (``synthetic``, ``bigquery_ga4``, ``sftp``) with
typed ``config`` and ``secrets`` Structs. The engine calls:

- ``test(ctx)``: a quick reachability/permission check returning :class:`TestResult`
  (the engine bounds it with a timeout);
- ``default_window(config, today)``: the dates a scheduled or manual run covers when
  none is given (``None`` for file-set sources, which use the ledger instead);
- ``extract(ctx)``: an async iterator of :class:`Batch`. Each batch carries rows
  shaped like the canonical schema (``app.modules.events.CANONICAL_FIELDS``), rows
  the connector itself could not parse (``rejects``), and what to commit with it:
  a cursor patch and/or a file ledger entry. ``commit=False`` keeps the transaction
  open so an item (a file) spanning several batches commits all or nothing.

Errors: raise :class:`TerminalError` for what a retry cannot fix (bad credentials,
missing table, invalid config) and :class:`TransientError` for what it may
(network, timeouts, 5xx, rate limits). Any other exception counts as transient.
Check ``ctx.cancelled()`` between slow steps; the engine also stops at each batch.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import httpx
import msgspec

from app.core.outbound import OutboundPolicy

if TYPE_CHECKING:
    from app.core.workers import WorkerPool
    from app.modules.ingestion.prepare import Prepared


class ConnectorError(Exception):
    """Base of connector failures; ``str(exc)`` is shown to admins, so keep secrets out."""


class TerminalError(ConnectorError):
    """Retrying will not help: the run fails at once with this reason."""


class TransientError(ConnectorError):
    """Retrying later may help: the run is retried with backoff up to its max attempts."""


class RunCancelled(Exception):
    """Raised by ``ctx.raise_if_cancelled()`` when the run was cancelled or is shutting down."""


@dataclass(frozen=True)
class DateWindow:
    """Inclusive range of dates (in the tenant's timezone for scheduled runs)."""

    start: date
    end: date

    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days + 1)]


@dataclass(frozen=True)
class Reject:
    """A row the connector could not turn into a mapping (bad CSV line, invalid UTF-8)."""

    reason: str
    raw: str | None = None
    line_number: int | None = None


@dataclass(frozen=True)
class LedgerEntry:
    """A file that is fully imported once its batch commits (SFTP-like sources)."""

    path: str
    size: int
    sha256: str
    mtime: datetime | None = None


@dataclass
class Batch:
    rows: Sequence[Mapping[str, Any]]
    item: str | None = None
    # Line/row number of rows[0] within ``item``; row i is first_line + i unless
    # ``line_numbers`` gives each row's number.
    first_line: int | None = None
    line_numbers: Sequence[int] | None = None
    rejects: Sequence[Reject] = ()
    cursor: Mapping[str, Any] | None = None
    ledger: LedgerEntry | None = None
    commit: bool = True
    bytes_read: int = 0
    # Roll back everything not committed yet before taking this batch: the connector
    # gives up on the item it was loading (its rows so far are dropped) and carries on.
    abandon: bool = False
    # Rows already parsed and validated in a worker process (COPY-ready), instead of
    # ``rows``; its rejects are quarantined like ``rejects``.
    prepared: Prepared | None = None


class Progress:
    """What a run is doing now; the engine persists it with each heartbeat."""

    def __init__(self) -> None:
        self.stage = "starting"
        self.current_item: str | None = None
        self.rows_read = 0
        self.bytes_read = 0

    def report(
        self,
        *,
        stage: str | None = None,
        item: str | None = None,
        rows_read: int = 0,
        bytes_read: int = 0,
    ) -> None:
        if stage is not None:
            self.stage = stage
        if item is not None:
            self.current_item = item
        self.rows_read += rows_read
        self.bytes_read += bytes_read


@dataclass(frozen=True)
class TestCheck:
    __test__ = False  # not a pytest class

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class TestResult:
    __test__ = False

    ok: bool
    checks: list[TestCheck] = field(default_factory=list)


@dataclass
class SourceContext:
    """What ``test`` gets: the source's identity, typed config and decrypted secrets."""

    tenant_id: str
    source_id: uuid.UUID
    config: Any
    secrets: Any
    timezone: str
    http: httpx.AsyncClient | None = None
    executor: ThreadPoolExecutor | None = None
    # Which tenant-configured destinations may be reached (PULSE_OUTBOUND_ALLOW);
    # None: public addresses only.
    outbound: OutboundPolicy | None = None
    # Worker processes for per-row CPU work (file parsing); None only in unit tests of
    # connectors that do not need it.
    workers: WorkerPool | None = None


@dataclass
class ExtractContext(SourceContext):
    """What ``extract`` gets, on top of :class:`SourceContext`."""

    run_id: uuid.UUID = field(default_factory=uuid.uuid4)
    attempt: int = 1
    window: DateWindow | None = None
    files: list[str] | None = None
    cursor: dict[str, Any] = field(default_factory=dict)
    batch_rows: int = 50_000
    progress: Progress = field(default_factory=Progress)
    is_cancelled: Callable[[], bool] = lambda: False
    # Files already imported for this source: path -> its ledger entries.
    imported_files: Callable[[], Awaitable[dict[str, list[LedgerEntry]]]] | None = None

    def cancelled(self) -> bool:
        return self.is_cancelled()

    def raise_if_cancelled(self) -> None:
        if self.is_cancelled():
            raise RunCancelled()


class Connector(Protocol):
    kind: ClassVar[str]
    config_type: ClassVar[type[msgspec.Struct]]
    secrets_type: ClassVar[type[msgspec.Struct]]

    def default_window(self, config: Any, today: date) -> DateWindow | None: ...

    async def test(self, ctx: SourceContext) -> TestResult: ...

    def extract(self, ctx: ExtractContext) -> AsyncIterator[Batch]: ...
