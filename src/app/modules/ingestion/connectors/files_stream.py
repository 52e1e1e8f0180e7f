"""Moving a file's bytes from the event loop to a parser thread and batches back.

The loop reads the remote file in fixed-size chunks and feeds them to a bounded
queue; a dedicated thread (not a pool thread: it blocks for the whole file and must
not starve the pool the loader also uses) reads them as a blocking binary stream,
hashes them, decompresses and parses, and hands batches back through another bounded
queue. Both queues live on the loop; the thread waits on them with short timeouts so
an abort stops it promptly. Memory is bounded by the two queue sizes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from app.modules.ingestion.connectors.files_parse import (
    ParsedBatch,
    ParseOptions,
    UnreadableFile,
    open_stream,
    parse,
)

T = TypeVar("T")
_POLL_S = 0.2
_DRAIN = 1 << 20


class _Stopped(Exception):
    pass


@dataclass(frozen=True)
class Finished:
    """The whole file went through: its digest and size, and whether it was gzip."""

    sha256: str
    size: int
    compressed: bool


Result = ParsedBatch | Finished | BaseException


class StreamBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, chunks: int = 4, batches: int = 2):
        self.loop = loop
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=chunks)
        self.results: asyncio.Queue[Result] = asyncio.Queue(maxsize=batches)
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    # --- loop side -----------------------------------------------------------------
    async def feed(self, chunk: bytes) -> None:
        await self.chunks.put(chunk)

    async def end(self) -> None:
        await self.chunks.put(None)

    async def result(self) -> Result:
        return await self.results.get()

    def abort(self) -> None:
        """Stop the thread (it notices within a poll interval) and free the queues."""
        self.stopped.set()

    def start(self, options: ParseOptions | None, *, gzip_by_name: bool, name: str) -> None:
        """``options=None`` only hashes and checks the (decompressed) stream."""
        self.thread = threading.Thread(
            target=self._work, args=(options, gzip_by_name), name=name, daemon=True
        )
        self.thread.start()

    # --- thread side ---------------------------------------------------------------
    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        while True:
            try:
                return future.result(timeout=_POLL_S)
            except concurrent.futures.TimeoutError:
                if self.stopped.is_set():
                    future.cancel()
                    raise _Stopped() from None

    def _emit(self, item: Result) -> None:
        self._wait(self.results.put(item))

    def _work(self, options: ParseOptions | None, gzip_by_name: bool) -> None:
        pipe = _Pipe(self)
        try:
            stream, compressed = open_stream(pipe, gzip_by_name=gzip_by_name, detect=True)
            try:
                if options is None:
                    while stream.read(_DRAIN):
                        pass
                else:
                    for batch in parse(stream, options):
                        self._emit(batch)
            except (EOFError, OSError) as exc:
                raise UnreadableFile(f"corrupt or truncated gzip data: {exc}") from None
            pipe.drain()  # bytes after the data (gzip trailer padding) still count
            self._emit(Finished(pipe.hasher.hexdigest(), pipe.size, compressed))
        except _Stopped:
            return
        except BaseException as exc:
            try:
                self._emit(exc)
            except _Stopped:
                return


class _Pipe(io.RawIOBase):
    """The file's bytes as a blocking stream in the parser thread; hashes as it goes."""

    def __init__(self, bridge: StreamBridge) -> None:
        self.bridge = bridge
        self.hasher = hashlib.sha256()
        self.size = 0
        self.buffer = memoryview(b"")
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        if not self.buffer and not self.eof:
            chunk = self.bridge._wait(self.bridge.chunks.get())
            if chunk is None:
                self.eof = True
            else:
                self.hasher.update(chunk)
                self.size += len(chunk)
                self.buffer = memoryview(chunk)
        if not self.buffer:
            return 0
        n = min(len(target), len(self.buffer))
        target[:n] = self.buffer[:n]
        self.buffer = self.buffer[n:]
        return n

    def drain(self) -> None:
        scratch = bytearray(_DRAIN)
        while self.readinto(scratch):
            pass
