"""The ``sftp`` source: CSV or JSON Lines files (optionally gzipped) dropped on an SFTP server.

A run lists the remote directory, keeps regular files matching the glob that have
settled (not modified for ``settle_s``) and are not in the source's file ledger with
the same content, and imports them one by one, oldest first. A file's rows go to the
loader in batches that stay in one open transaction (``commit=False``); the last batch
carries the ledger entry (path, size, mtime, sha256) and commits, so a file is
imported all or nothing. After the commit the file is left, moved to
``processed_dir`` or deleted.

A gzip file is first read once without parsing, to check it decompresses to the end
(a truncated upload fails that file, with a quarantine entry, and the run goes on)
and to know its digest. A path already in the ledger is hashed first too, so an
unchanged file is skipped without parsing and a re-uploaded one with new content is
imported again (event-id deduplication absorbs the overlap). A dropped connection
fails the attempt (transient): the engine rolls the open file back and retries it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import posixpath
import time
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any, ClassVar, cast

import asyncssh
import msgspec
import structlog

from app.modules.ingestion.connectors import register_connector
from app.modules.ingestion.connectors.base import (
    Batch,
    DateWindow,
    ExtractContext,
    LedgerEntry,
    Reject,
    SourceContext,
    TerminalError,
    TestCheck,
    TestResult,
)
from app.modules.ingestion.connectors.files_parse import (
    GZIP_MAGIC,
    ParseOptions,
    UnreadableFile,
)
from app.modules.ingestion.connectors.files_stream import FileChunk, Finished, StreamBridge
from app.modules.ingestion.connectors.sftp_config import SftpConfig, SftpSecrets
from app.modules.ingestion.connectors.sftp_session import (
    Endpoint,
    HostKeyCheck,
    classify,
    is_regular,
    open_sftp,
)
from app.modules.ingestion.prepare import Prepared, prepare_chunk

log = structlog.get_logger("app.ingestion.sftp")

# The configuration's mapping targets are the event store's canonical fields, all of them.


class RemoteFile(msgspec.Struct, frozen=True):
    name: str
    path: str
    size: int
    mtime: datetime | None


def _endpoint(ctx: SourceContext) -> Endpoint:
    config: SftpConfig = ctx.config
    secrets: SftpSecrets = ctx.secrets
    return Endpoint(
        host=config.host,
        port=config.port,
        username=config.username,
        host_key=config.host_key,
        connect_timeout_s=config.connect_timeout_s,
        login_timeout_s=config.login_timeout_s,
        keepalive_s=config.keepalive_s,
        password=secrets.password,
        private_key=secrets.private_key,
        passphrase=secrets.passphrase,
        outbound=ctx.outbound,
    )


def safe_name(name: str) -> bool:
    """Plain file names only: no separators, parents, hidden files or control characters."""
    return bool(name) and not (
        name.startswith(".")
        or "/" in name
        or "\\" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    )


async def list_files(sftp: asyncssh.SFTPClient, config: SftpConfig) -> list[RemoteFile]:
    """Regular files in ``remote_dir`` matching the pattern, oldest first (not settled too)."""
    async with asyncio.timeout(config.idle_timeout_s):
        entries = await sftp.readdir(config.remote_dir)
    files = []
    for entry in entries:
        name = entry.filename if isinstance(entry.filename, str) else entry.filename.decode()
        if not safe_name(name) or not fnmatch.fnmatchcase(name, config.pattern):
            continue
        if not is_regular(entry.attrs):
            continue
        mtime = (
            datetime.fromtimestamp(entry.attrs.mtime, tz=UTC)
            if entry.attrs.mtime is not None
            else None
        )
        path = posixpath.join(config.remote_dir, name)
        files.append(RemoteFile(name, path, int(entry.attrs.size or 0), mtime))
    files.sort(key=lambda f: (f.mtime or datetime.min.replace(tzinfo=UTC), f.name))
    return files


class SftpConnector:
    kind: ClassVar[str] = "sftp"
    config_type: ClassVar[type[msgspec.Struct]] = SftpConfig
    secrets_type: ClassVar[type[msgspec.Struct]] = SftpSecrets

    def default_window(self, config: Any, today: date) -> DateWindow | None:
        return None  # a file set: the ledger says what is new

    async def test(self, ctx: SourceContext) -> TestResult:
        config: SftpConfig = ctx.config
        endpoint = _endpoint(ctx)
        checks: list[TestCheck] = []
        try:
            async with open_sftp(endpoint) as sftp:
                checks.append(
                    TestCheck(
                        "connection", True, f"host key verified, logged in as {endpoint.username}"
                    )
                )
                files = await list_files(sftp, config)
        except Exception as exc:
            error = classify(exc, endpoint, HostKeyCheck())
            checks.append(TestCheck("directory" if checks else "connection", False, str(error)))
            return TestResult(ok=False, checks=checks)
        if not files:
            checks.append(
                TestCheck(
                    "files",
                    False,
                    f"no files matching {config.pattern!r} in {config.remote_dir!r}",
                )
            )
            return TestResult(ok=False, checks=checks)
        checks.append(TestCheck("files", True, f"{len(files)} files matching {config.pattern!r}"))
        return TestResult(ok=True, checks=checks)

    async def extract(self, ctx: ExtractContext) -> AsyncIterator[Batch]:
        config: SftpConfig = ctx.config
        endpoint = _endpoint(ctx)
        imported = await ctx.imported_files() if ctx.imported_files else {}
        ctx.progress.report(stage="listing files", item=config.remote_dir)
        try:
            async with open_sftp(endpoint) as sftp:
                files = await list_files(sftp, config)
                candidates = self._select(ctx, files)
                log.info(
                    "sftp.listed",
                    tenant_id=ctx.tenant_id,
                    run_id=str(ctx.run_id),
                    files=len(files),
                    candidates=len(candidates),
                )
                for remote in candidates:
                    ctx.raise_if_cancelled()
                    async for batch in self._import(ctx, sftp, remote, imported):
                        yield batch
        except asyncssh.Error as exc:
            raise classify(exc, endpoint, HostKeyCheck()) from exc
        except OSError as exc:
            raise classify(exc, endpoint, HostKeyCheck()) from exc

    def _select(self, ctx: ExtractContext, files: list[RemoteFile]) -> list[RemoteFile]:
        config: SftpConfig = ctx.config
        now = time.time()
        chosen = []
        wanted = set(ctx.files) if ctx.files else None
        for remote in files:
            if wanted is not None and remote.name not in wanted and remote.path not in wanted:
                continue
            if remote.mtime is not None and now - remote.mtime.timestamp() < config.settle_s:
                continue  # still being uploaded, maybe
            chosen.append(remote)
        return chosen[: config.max_files_per_run]

    def _options(self, ctx: ExtractContext) -> ParseOptions:
        config: SftpConfig = ctx.config
        if config.format == "csv" and not config.csv_header and not config.columns:
            raise TerminalError("csv_header is false: give the column names in 'columns'")
        return ParseOptions(
            format=config.format,
            gzip=config.compression == "gzip",
            delimiter=config.csv_delimiter,
            header=config.csv_header,
            columns=None if config.csv_header else config.columns,
            mapping=dict(config.column_mapping),
            timestamp_format=config.timestamp_format,
            timezone=config.timezone or ctx.timezone or "UTC",
            batch_rows=min(config.batch_rows, ctx.batch_rows),
        )

    async def _import(
        self,
        ctx: ExtractContext,
        sftp: asyncssh.SFTPClient,
        remote: RemoteFile,
        imported: dict[str, list[LedgerEntry]],
    ) -> AsyncIterator[Batch]:
        config: SftpConfig = ctx.config
        entries = imported.get(remote.path, [])
        if remote.mtime is not None and any(
            e.size == remote.size and e.mtime == remote.mtime for e in entries
        ):
            # Imported already, and not touched since (same size and modification time):
            # skipped without reading it again.
            log.info("sftp.unchanged", run_id=str(ctx.run_id), path=remote.path, by="mtime")
            return
        known = {e.sha256 for e in entries}
        ctx.progress.report(stage="reading", item=remote.path)
        gzip_by_name = config.compression == "gzip" or (
            config.compression == "auto" and remote.name.endswith(".gz")
        )
        if config.compression == "auto" and not gzip_by_name:
            gzip_by_name = await self._has_gzip_magic(ctx, sftp, remote)
        digest: str | None = None
        if gzip_by_name or known:
            # First pass: the digest, and whether the file reads to its end.
            try:
                checked = await self._verify(ctx, sftp, remote, gzip_by_name)
            except UnreadableFile as exc:
                yield self._unreadable(ctx, remote, str(exc))
                return
            if checked.sha256 in known:
                log.info("sftp.unchanged", run_id=str(ctx.run_id), path=remote.path, by="sha256")
                return
            digest = checked.sha256
            gzip_by_name = checked.compressed
        options = self._options(ctx)
        workers = ctx.workers
        if workers is None:
            raise TerminalError("file imports need the worker pool")
        bridge = StreamBridge(asyncio.get_running_loop())
        bridge.start(options, gzip_by_name=gzip_by_name, name=f"sftp-split-{remote.name[:40]}")
        finished: Finished | None = None
        # A pipeline: while the loader copies one chunk's rows into PostgreSQL, the
        # next ones are parsed in the workers and the file keeps being read, each stage
        # bounded (``depth`` chunks in the workers, the bridge's queues before them).
        inflight: deque[asyncio.Task[Prepared]] = deque()
        depth = workers.workers + 1
        source_id = str(ctx.source_id)
        try:
            async for item in self._pump(ctx, sftp, remote, bridge):
                if isinstance(item, Finished):
                    finished = item
                    break
                inflight.append(
                    asyncio.create_task(
                        workers.run(prepare_chunk, ctx.tenant_id, source_id, item, options)
                    )
                )
                if len(inflight) >= depth:
                    yield self._chunk_batch(remote, await inflight.popleft())
            while inflight:
                yield self._chunk_batch(remote, await inflight.popleft())
        except UnreadableFile as exc:
            # What was yielded of the file is not committed yet: drop it, say why, go on
            # to the next file.
            yield self._unreadable(ctx, remote, str(exc), abandon=True)
            return
        finally:
            bridge.abort()
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
        assert finished is not None
        if digest is not None and finished.sha256 != digest:
            raise classify(
                asyncssh.SFTPError(asyncssh.FX_FAILURE, f"{remote.path} changed while importing"),
                _endpoint(ctx),
                HostKeyCheck(),
            )
        yield Batch(
            rows=[],
            item=remote.path,
            ledger=LedgerEntry(remote.path, finished.size, finished.sha256, remote.mtime),
            commit=True,
        )
        # The file's rows and ledger entry are committed now.
        await self._after_import(ctx, sftp, remote)

    @staticmethod
    def _chunk_batch(remote: RemoteFile, prepared: Prepared) -> Batch:
        return Batch(rows=[], item=remote.path, prepared=prepared, commit=False)

    async def _has_gzip_magic(
        self, ctx: ExtractContext, sftp: asyncssh.SFTPClient, remote: RemoteFile
    ) -> bool:
        config: SftpConfig = ctx.config
        async with asyncio.timeout(config.idle_timeout_s):
            handle = await sftp.open(remote.path, "rb")
        try:
            async with asyncio.timeout(config.idle_timeout_s):
                head = cast(bytes, await handle.read(2))
        finally:
            await _close_quietly(handle, min(5.0, config.idle_timeout_s))
        return bool(head == GZIP_MAGIC)

    def _unreadable(
        self, ctx: ExtractContext, remote: RemoteFile, reason: str, *, abandon: bool = False
    ) -> Batch:
        log.warning(
            "sftp.file_unreadable",
            tenant_id=ctx.tenant_id,
            run_id=str(ctx.run_id),
            path=remote.path,
            reason=reason,
        )
        # Recorded in quarantine (no ledger entry: a fixed re-upload is imported later).
        return Batch(
            rows=[],
            item=remote.path,
            rejects=[Reject(reason=f"file not imported: {reason}", raw=None, line_number=None)],
            commit=True,
            abandon=abandon,
        )

    async def _verify(
        self, ctx: ExtractContext, sftp: asyncssh.SFTPClient, remote: RemoteFile, gzip_by_name: bool
    ) -> Finished:
        bridge = StreamBridge(asyncio.get_running_loop())
        bridge.start(None, gzip_by_name=gzip_by_name, name=f"sftp-check-{remote.name[:40]}")
        try:
            async for item in self._pump(ctx, sftp, remote, bridge, report=False):
                if isinstance(item, Finished):
                    return item
        finally:
            bridge.abort()
        raise UnreadableFile("the file ended unexpectedly")

    async def _pump(
        self,
        ctx: ExtractContext,
        sftp: asyncssh.SFTPClient,
        remote: RemoteFile,
        bridge: StreamBridge,
        *,
        report: bool = True,
    ) -> AsyncIterator[FileChunk | Finished]:
        """Feed the file to ``bridge`` and yield what its thread produces."""
        config: SftpConfig = ctx.config
        chunk_size = config.block_size * config.max_requests
        sent = 0

        async def feed() -> None:
            nonlocal sent
            async with asyncio.timeout(config.idle_timeout_s):
                handle = await sftp.open(
                    remote.path,
                    "rb",
                    block_size=config.block_size,
                    max_requests=config.max_requests,
                )
            try:
                while True:
                    async with asyncio.timeout(config.idle_timeout_s):
                        chunk = cast(bytes, await handle.read(chunk_size))
                    if not chunk:
                        break
                    sent += len(chunk)
                    await bridge.feed(chunk)
            finally:
                await _close_quietly(handle, min(5.0, config.idle_timeout_s))
            await bridge.end()

        feeder = asyncio.create_task(feed(), name=f"sftp-read-{remote.name[:40]}")
        reported = 0
        try:
            while True:
                getter = asyncio.create_task(bridge.result())
                await asyncio.wait({getter, feeder}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    error = feeder.exception()
                    if error is not None:
                        getter.cancel()
                        raise error
                    await getter  # fed to the end: the thread still has work to hand back
                item = getter.result()
                if isinstance(item, BaseException):
                    raise item
                if report and not isinstance(item, Finished):
                    ctx.progress.report(item=remote.path, bytes_read=sent - reported)
                    reported = sent
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            if not feeder.done():
                feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)

    async def _after_import(
        self, ctx: ExtractContext, sftp: asyncssh.SFTPClient, remote: RemoteFile
    ) -> None:
        config: SftpConfig = ctx.config
        try:
            async with asyncio.timeout(config.idle_timeout_s):
                if config.after_import == "delete":
                    await sftp.remove(remote.path)
                elif config.after_import == "move":
                    target_dir = posixpath.join(config.remote_dir, config.processed_dir)
                    if not await sftp.isdir(target_dir):
                        await sftp.mkdir(target_dir)
                    await sftp.rename(remote.path, posixpath.join(target_dir, remote.name))
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            # The ledger already protects against a second import; tell the admin.
            log.warning(
                "sftp.after_import_failed",
                tenant_id=ctx.tenant_id,
                run_id=str(ctx.run_id),
                path=remote.path,
                action=config.after_import,
                error=str(exc),
            )


async def _close_quietly(handle: asyncssh.SFTPClientFile, timeout_s: float = 5.0) -> None:
    """Close a remote file without waiting long on a server that stopped answering."""
    try:
        async with asyncio.timeout(timeout_s):
            await handle.close()
    except (TimeoutError, asyncssh.Error, OSError) as exc:
        log.debug("sftp.close_failed", error=type(exc).__name__)


register_connector(SftpConnector())
