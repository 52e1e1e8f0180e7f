"""Moving a file's bytes from the event loop to a splitter thread and record chunks back.

The loop reads the remote file in fixed-size chunks and feeds them to a bounded
queue; a dedicated thread (not a pool thread: it blocks for the whole file and must
not starve the pool the loader also uses) reads them as a blocking binary stream,
hashes and decompresses them (C code that releases the GIL) and cuts the text into
:class:`FileChunk` s of whole records (``bytes.rfind``/``count``: C as well), handed
back through another bounded queue. Parsing them is pure Python and happens in worker
processes (``ingestion.prepare``), not here. Both queues live on the loop; the thread
waits on them with short timeouts so an abort stops it promptly. Memory is bounded by
the two queue sizes and the chunk size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import threading
import zlib
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from app.modules.ingestion.connectors.files_parse import (
    ParseOptions,
    UnreadableFile,
    header_columns,
    open_stream,
)

T = TypeVar("T")
_POLL_S = 0.2
_DRAIN = 1 << 20
# Decompressed bytes per chunk handed to a worker: about 10-20k rows, well under a
# second of parsing (a cancelled run's workers finish their chunk and stop).
CHUNK_BYTES = 1 << 20
# A record (CSV line, JSON line) longer than this makes the file unreadable.
MAX_RECORD_BYTES = 16 << 20


@dataclass(frozen=True)
class FileChunk:
    """Whole records of a decompressed file; the first starts on line ``line_offset + 1``.
    ``columns``: the CSV header's (or configured) column names."""

    data: bytes
    line_offset: int
    columns: tuple[str, ...] | None


def _last_record_end(buffer: bytearray, quotes: bool) -> int:
    """The position just after the last complete record in ``buffer`` (0: none yet).

    A newline ends a record unless it is inside a quoted CSV field, that is, unless an
    odd number of quote characters precede it (doubled quotes inside a field count
    twice). Linear: the count is taken once, then updated newline by newline.
    """
    pos = buffer.rfind(b"\n")
    if pos < 0 or not quotes:
        return pos + 1
    odd = buffer.count(b'"', 0, pos) % 2
    while odd and pos >= 0:
        previous = buffer.rfind(b"\n", 0, pos)
        odd ^= buffer.count(b'"', previous + 1, pos) % 2
        pos = previous
    return pos + 1


def _first_record_end(buffer: bytearray, quotes: bool) -> int:
    pos = buffer.find(b"\n")
    odd = buffer.count(b'"', 0, pos) % 2 if pos >= 0 and quotes else 0
    while odd and pos >= 0:
        following = buffer.find(b"\n", pos + 1)
        if following < 0:
            return 0
        odd ^= buffer.count(b'"', pos + 1, following) % 2
        pos = following
    return pos + 1


def split_records(
    stream: IO[bytes], options: ParseOptions, *, size: int = CHUNK_BYTES
) -> Iterator[FileChunk]:
    """Cut a decompressed stream into chunks of whole records (the CSV header apart)."""
    is_csv = options.format == "csv"
    columns = tuple(options.columns) if is_csv and options.columns else None
    need_header = is_csv and options.header and columns is None
    buffer = bytearray()
    line = 0
    eof = False
    while not eof:
        block = stream.read(size)
        eof = not block
        buffer += block
        if need_header:
            cut = len(buffer) if eof else _first_record_end(buffer, True)
            if not cut:
                _check_record(buffer)
                continue
            header = bytes(buffer[:cut])
            del buffer[:cut]
            line += header.count(b"\n")
            columns = tuple(header_columns(header, options.delimiter))
            need_header = False
        if not eof and len(buffer) < size:
            continue
        cut = len(buffer) if eof else _last_record_end(buffer, is_csv)
        if not cut:
            _check_record(buffer)
            continue
        data = bytes(buffer[:cut])
        del buffer[:cut]
        yield FileChunk(data, line, columns)
        line += data.count(b"\n")


def _check_record(buffer: bytearray) -> None:
    if len(buffer) > MAX_RECORD_BYTES:
        raise UnreadableFile(f"a record is longer than {MAX_RECORD_BYTES >> 20} MiB")


class _Stopped(Exception):
    pass


@dataclass(frozen=True)
class Finished:
    """The whole file went through: its digest and size, and whether it was gzip."""

    sha256: str
    size: int
    compressed: bool


Result = FileChunk | Finished | BaseException


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
                    for chunk in split_records(stream, options):
                        self._emit(chunk)
            except (EOFError, OSError, zlib.error) as exc:
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
