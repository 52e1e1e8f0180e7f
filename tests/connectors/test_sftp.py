"""The ``sftp`` connector against a real asyncssh SFTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncssh
import pytest

from app.core.workers import WorkerPool
from app.modules.events import to_canonical
from app.modules.ingestion.connectors.base import (
    Batch,
    LedgerEntry,
    TerminalError,
    TransientError,
)
from app.modules.ingestion.connectors.files_stream import CHUNK_BYTES
from app.modules.ingestion.connectors.sftp import SftpConnector
from tests.connectors.helpers import (
    all_rows,
    collect,
    extract_context,
    rejects_of,
    rows_of,
    source_context,
)
from tests.fixtures.sftp import KEY_USER, SftpServer

CONNECTOR = SftpConnector()
WORKERS: list[WorkerPool] = []


@pytest.fixture(autouse=True)
def _workers(worker_pool: WorkerPool) -> Any:
    """Every context made by :func:`ctx_for` parses in the shared worker processes."""
    WORKERS[:] = [worker_pool]
    yield
    WORKERS.clear()


HEADER = "event_id,event_name,occurred_at,user_id,session_id,page_path,revenue,currency\n"


def csv_rows(n: int, *, start: int = 0, day: str = "2026-01-05") -> str:
    return "".join(
        f"e{i},page_view,{day}T10:00:{i % 60:02d}Z,u{i // 10},s{i // 5},/p/{i % 5},,\n"
        for i in range(start, start + n)
    )


def ctx_for(server: SftpServer, secrets: dict[str, Any] | None = None, **config: Any) -> Any:
    return extract_context(
        CONNECTOR,
        server.config(**config),
        secrets or server.secrets(),
        batch_rows=50_000,
        workers=WORKERS[0],
    )


def ledger(batches: list[Batch]) -> dict[str, Any]:
    return {b.ledger.path: b.ledger for b in batches if b.ledger is not None}


async def test_csv_file_imports_with_its_ledger_entry_committed_last(
    sftp_server: SftpServer,
) -> None:
    body = (HEADER + csv_rows(12)).encode()
    await sftp_server.write("day1.csv", body)
    batches = await collect(CONNECTOR, ctx_for(sftp_server, batch_rows=5))
    rows = all_rows(batches)
    assert len(rows) == 12
    assert rows[0]["event_id"] == "e0"
    assert rows[0]["occurred_at"] == datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)
    assert rows[0]["revenue"] is None  # empty cell -> null
    # Data batches keep the transaction open; the last one carries the ledger and commits.
    # The rows were parsed and validated in a worker process, not in this one.
    assert [b.commit for b in batches] == [False, True]
    assert [len(rows_of(b)) for b in batches] == [12, 0]
    assert batches[0].prepared is not None
    assert batches[0].prepared.pid in WORKERS[0].pids()
    assert batches[0].prepared.pid != os.getpid()
    entry = ledger(batches)["/incoming/day1.csv"]
    assert entry.size == len(body)
    assert entry.sha256 == hashlib.sha256(body).hexdigest()
    assert entry.mtime is not None
    for row in rows:
        to_canonical(row)


async def test_key_auth_with_passphrase_and_fingerprint_pin(sftp_server: SftpServer) -> None:
    await sftp_server.write("a.csv", (HEADER + csv_rows(3)).encode())
    ctx = extract_context(
        CONNECTOR,
        sftp_server.config(username=KEY_USER, host_key=sftp_server.fingerprint),
        {"private_key": sftp_server.private_key_text("pw"), "passphrase": "pw"},
        workers=WORKERS[0],
    )
    assert len(all_rows(await collect(CONNECTOR, ctx))) == 3


async def test_wrong_host_key_is_refused(sftp_server: SftpServer) -> None:
    await sftp_server.write("a.csv", (HEADER + csv_rows(3)).encode())
    other = asyncssh.generate_private_key("ssh-ed25519")
    line = f"[127.0.0.1]:{sftp_server.port} {other.export_public_key().decode().strip()}"
    for pin in (line, str(other.get_fingerprint("sha256"))):
        with pytest.raises(TerminalError, match="does not match the configured host key"):
            await collect(CONNECTOR, ctx_for(sftp_server, host_key=pin))
    result = await CONNECTOR.test(
        source_context(
            CONNECTOR,
            sftp_server.config(host_key=str(other.get_fingerprint("sha256"))),
            sftp_server.secrets(),
        )
    )
    assert not result.ok
    assert sftp_server.fingerprint in result.checks[-1].detail  # what it presented


async def test_host_key_is_required_and_must_parse(sftp_server: SftpServer) -> None:
    with pytest.raises(Exception, match="host_key"):
        source_context(
            CONNECTOR, {k: v for k, v in sftp_server.config().items() if k != "host_key"}
        )
    with pytest.raises(TerminalError, match="known_hosts line"):
        await collect(CONNECTOR, ctx_for(sftp_server, host_key="not a key at all"))


async def test_wrong_password_is_terminal(sftp_server: SftpServer) -> None:
    with pytest.raises(TerminalError, match="authentication failed"):
        await collect(CONNECTOR, ctx_for(sftp_server, {"password": "wrong"}))


async def test_unreachable_server_is_transient(sftp_server: SftpServer) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError, match="cannot reach"):
        await collect(CONNECTOR, ctx_for(sftp_server, port=port))


async def test_connection_test_reports_files(sftp_server: SftpServer) -> None:
    ctx = source_context(CONNECTOR, sftp_server.config(pattern="*.csv"), sftp_server.secrets())
    result = await CONNECTOR.test(ctx)
    assert not result.ok
    assert "no files matching" in result.checks[-1].detail
    await sftp_server.write("a.csv", b"x")
    result = await CONNECTOR.test(ctx)
    assert result.ok, result.checks
    assert [c.name for c in result.checks] == ["connection", "files"]
    bad = source_context(CONNECTOR, sftp_server.config(), {"password": "nope"})
    result = await CONNECTOR.test(bad)
    assert not result.ok
    assert "authentication failed" in result.checks[0].detail


async def test_gzip_by_extension_and_by_magic_bytes_and_jsonl(sftp_server: SftpServer) -> None:
    await sftp_server.write("a.csv.gz", gzip.compress((HEADER + csv_rows(4)).encode()))
    await sftp_server.write("b.csv", gzip.compress((HEADER + csv_rows(3, start=10)).encode()))
    rows = all_rows(await collect(CONNECTOR, ctx_for(sftp_server, pattern="*.csv*")))
    assert sorted(r["event_id"] for r in rows) == ["e0", "e1", "e10", "e11", "e12", "e2", "e3"]

    lines = [
        {
            "event_name": "page_view",
            "occurred_at": "2026-01-05T10:00:00+01:00",
            "user_id": "u1",
            "page_path": "/a",
            "properties": {"plan": "pro"},
            "extra": 5,
        },
        {"event_name": "purchase", "occurred_at": 1767607200, "revenue": "9.99", "currency": "EUR"},
    ]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    await sftp_server.write("e.jsonl.gz", gzip.compress(body))
    rows = all_rows(
        await collect(CONNECTOR, ctx_for(sftp_server, pattern="*.jsonl*", format="jsonl"))
    )
    assert rows[0]["occurred_at"] == datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert rows[0]["properties"] == {"plan": "pro", "extra": 5}
    assert rows[1]["occurred_at"] == datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    event = to_canonical(rows[1])
    assert event.revenue == Decimal("9.99")
    assert event.event_id  # derived from the identifying fields


async def test_malformed_rows_are_rejected_with_line_numbers(sftp_server: SftpServer) -> None:
    body = (
        HEADER.encode()
        + b"e1,page_view,2026-01-05T10:00:00Z,u1,s1,/a,,\n"  # line 2 ok
        + b"e2,page_view,2026-01-05T10:00:00Z,u1\n"  # 3: too few columns
        + b"e3,page_view,yesterday,u1,s1,/a,,\n"  # 4: bad timestamp
        + b"e4,page_view,2026-01-05T10:00:00Z,u\xff\xfe,s1,/a,,\n"  # 5: invalid UTF-8
        + b"e5,,2026-01-05T10:00:00Z,u1,s1,/a,,\n"  # 6: no event name
        + b'e6,page_view,2026-01-05T10:00:00Z,u1,s1,"/multi\nline",,\n'  # 7-8: quoted newline
        + b"e7,page_view,2026-01-05T10:00:00Z,u1,s1,/b,notmoney,\n"  # 9: validation rejects
        + b"e8,page_view,2026-01-05T11:00:00Z,u1,s1,/c,,\n"  # 10 ok
    )
    await sftp_server.write("bad.csv", body)
    batches = await collect(CONNECTOR, ctx_for(sftp_server))
    rejects = sorted((r.line_number, r.reason) for b in batches for r in rejects_of(b))
    assert rejects == [
        (3, "expected 8 columns, got 4"),
        (4, "bad timestamp 'yesterday'"),
        (5, "invalid UTF-8"),
        (6, "missing event_name"),
        (9, "Invalid decimal string - at `$.revenue`"),  # validated in the worker too
    ]
    rows = {r["event_id"]: r for r in all_rows(batches)}
    assert sorted(rows) == ["e1", "e6", "e8"]
    assert rows["e6"]["page_path"] == "/multi\nline"
    assert ledger(batches)  # the file itself is fine


async def test_csv_without_header_with_mapping_format_and_timezone(
    sftp_server: SftpServer,
) -> None:
    body = b"05/01/2026 10:30;signup;alice;/join\n05/01/2026 23:59;signup;bob;/join\n"
    await sftp_server.write("x.txt", body)
    ctx = ctx_for(
        sftp_server,
        csv_header=False,
        columns=["ts", "action", "who", "url"],
        csv_delimiter=";",
        column_mapping={
            "ts": "occurred_at",
            "action": "event_name",
            "who": "user_id",
            "url": "page_path",
        },
        timestamp_format="%d/%m/%Y %H:%M",
        timezone="Europe/Berlin",
    )
    rows = all_rows(await collect(CONNECTOR, ctx))
    assert [(r["event_name"], r["user_id"], r["page_path"]) for r in rows] == [
        ("signup", "alice", "/join"),
        ("signup", "bob", "/join"),
    ]
    assert rows[0]["occurred_at"] == datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    assert rows[1]["occurred_at"] == datetime(2026, 1, 5, 22, 59, tzinfo=UTC)
    with pytest.raises(TerminalError, match="give the column names"):
        await collect(CONNECTOR, ctx_for(sftp_server, csv_header=False))


async def test_truncated_gzip_fails_only_that_file(sftp_server: SftpServer) -> None:
    whole = gzip.compress((HEADER + csv_rows(2000)).encode())
    await sftp_server.write("a-broken.csv.gz", whole[: len(whole) // 2], mtime=time.time() - 100)
    await sftp_server.write("b-good.csv", (HEADER + csv_rows(3)).encode(), mtime=time.time() - 50)
    batches = await collect(CONNECTOR, ctx_for(sftp_server))
    broken = [b for b in batches if b.item == "/incoming/a-broken.csv.gz"]
    # Nothing of it is loaded: one quarantine entry, committed alone, no ledger entry.
    assert len(broken) == 1
    assert broken[0].rows == []
    assert broken[0].prepared is None
    assert broken[0].commit
    assert "truncated gzip" in broken[0].rejects[0].reason
    assert list(ledger(batches)) == ["/incoming/b-good.csv"]
    assert len(all_rows(batches)) == 3


async def test_settle_time_skips_files_still_being_written(sftp_server: SftpServer) -> None:
    await sftp_server.write("old.csv", (HEADER + csv_rows(2)).encode(), mtime=time.time() - 600)
    await sftp_server.write("new.csv", (HEADER + csv_rows(2, start=5)).encode())
    batches = await collect(CONNECTOR, ctx_for(sftp_server, settle_s=300))
    assert list(ledger(batches)) == ["/incoming/old.csv"]


async def test_ledger_skips_unchanged_files_and_reimports_changed_ones(
    sftp_server: SftpServer,
) -> None:
    first = (HEADER + csv_rows(3)).encode()
    await sftp_server.write("a.csv", first, mtime=time.time() - 100)
    await sftp_server.write("b.csv", (HEADER + csv_rows(2, start=10)).encode())
    # Known by content only (mtime unknown): a.csv is read and hashed, then skipped.
    known = {"/incoming/a.csv": [LedgerEntry("/incoming/a.csv", 0, _sha(first))]}

    async def imported() -> dict[str, list[LedgerEntry]]:
        return known

    ctx = extract_context(
        CONNECTOR,
        sftp_server.config(),
        sftp_server.secrets(),
        imported_files=imported,
        workers=WORKERS[0],
    )
    batches = await collect(CONNECTOR, ctx)
    assert list(ledger(batches)) == ["/incoming/b.csv"]

    await sftp_server.write("a.csv", (HEADER + csv_rows(4)).encode())  # re-uploaded, changed
    ctx = extract_context(
        CONNECTOR,
        sftp_server.config(),
        sftp_server.secrets(),
        imported_files=imported,
        workers=WORKERS[0],
    )
    batches = await collect(CONNECTOR, ctx)
    assert sorted(ledger(batches)) == ["/incoming/a.csv", "/incoming/b.csv"]


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


async def test_a_file_with_its_ledger_size_and_mtime_is_not_read_again(
    sftp_server: SftpServer,
) -> None:
    body = (HEADER + csv_rows(3)).encode()
    await sftp_server.write("a.csv", body, mtime=time.time() - 100)
    batches = await collect(CONNECTOR, ctx_for(sftp_server))
    entry = ledger(batches)["/incoming/a.csv"]
    assert (entry.size, entry.sha256) == (len(body), _sha(body))
    assert entry.mtime is not None
    # The ledger's digest is deliberately wrong: had the file been read and hashed again,
    # it would not match and the file would be imported a second time.
    stale = {"/incoming/a.csv": [LedgerEntry(entry.path, entry.size, "0" * 64, entry.mtime)]}

    async def imported() -> dict[str, list[LedgerEntry]]:
        return stale

    ctx = extract_context(
        CONNECTOR,
        sftp_server.config(),
        sftp_server.secrets(),
        imported_files=imported,
        workers=WORKERS[0],
    )
    assert await collect(CONNECTOR, ctx) == []
    # Touched since (same size, new mtime): read again, and here imported again.
    await sftp_server.write("a.csv", body, mtime=time.time() - 10)
    ctx = extract_context(
        CONNECTOR,
        sftp_server.config(),
        sftp_server.secrets(),
        imported_files=imported,
        workers=WORKERS[0],
    )
    assert list(ledger(await collect(CONNECTOR, ctx))) == ["/incoming/a.csv"]


@pytest.mark.parametrize("action", ["move", "delete"])
async def test_after_import_moves_or_deletes(sftp_server: SftpServer, action: str) -> None:
    await sftp_server.write("a.csv", (HEADER + csv_rows(2)).encode())
    await collect(CONNECTOR, ctx_for(sftp_server, after_import=action))
    assert await sftp_server.names() == (["processed"] if action == "move" else [])
    if action == "move":
        assert await sftp_server.names("incoming/processed") == ["a.csv"]


async def test_path_tricks_are_ignored(sftp_server: SftpServer, tmp_path: Any) -> None:
    outside = tmp_path / "secret.csv"
    await asyncio.to_thread(outside.write_text, HEADER + csv_rows(1, start=99))
    await asyncio.to_thread(os.symlink, outside, sftp_server.incoming / "link.csv")
    await sftp_server.write(".hidden.csv", (HEADER + csv_rows(1, start=50)).encode())
    await sftp_server.write("back\\slash.csv", (HEADER + csv_rows(1, start=60)).encode())
    await sftp_server.write("new\nline.csv", (HEADER + csv_rows(1, start=70)).encode())
    await asyncio.to_thread((sftp_server.incoming / "dir.csv").mkdir)
    await sftp_server.write("ok.csv", (HEADER + csv_rows(1)).encode())
    batches = await collect(CONNECTOR, ctx_for(sftp_server, pattern="*.csv"))
    assert list(ledger(batches)) == ["/incoming/ok.csv"]
    # The chroot holds: climbing out of it lands in its own root.
    batches = await collect(
        CONNECTOR, ctx_for(sftp_server, remote_dir="/../../incoming/../..", pattern="*")
    )
    assert ledger(batches) == {}
    # Asking for a file by a path outside the directory imports nothing.
    ctx = ctx_for(sftp_server, pattern="*.csv")
    ctx.files = ["../secret.csv", "/etc/passwd"]
    assert await collect(CONNECTOR, ctx) == []


async def test_dropped_connection_mid_file_is_transient_and_commits_nothing(
    sftp_server: SftpServer,
) -> None:
    await sftp_server.write("big.csv", (HEADER + csv_rows(200_000)).encode())
    sftp_server.faults.drop_after_bytes = 7_000_000  # of ~11 MB: after a few chunks
    batches: list[Batch] = []
    small_reads = {"batch_rows": 1000, "block_size": 16_384, "max_requests": 4}

    async def read_all() -> None:
        async for batch in CONNECTOR.extract(ctx_for(sftp_server, **small_reads)):
            batches.append(batch)

    with pytest.raises(TransientError):
        await read_all()
    assert batches, "the drop happened mid-file"
    assert all(not b.commit for b in batches)  # the engine rolls these back
    # The next attempt reads the whole file.
    batches = await collect(CONNECTOR, ctx_for(sftp_server))
    assert sum(b.prepared.rows for b in batches if b.prepared) == 200_000


async def test_slow_server_still_imports(sftp_server: SftpServer) -> None:
    body = (HEADER + csv_rows(3000)).encode()
    await sftp_server.write("a.csv", body)
    sftp_server.faults.read_delay_s = 0.05
    reads_before = sftp_server.faults.reads
    rows = all_rows(await collect(CONNECTOR, ctx_for(sftp_server, block_size=4096, max_requests=2)))
    assert len(rows) == 3000
    # It really was slow: every block of the file came through a delayed read.
    assert sftp_server.faults.reads - reads_before >= len(body) // 4096


async def test_stalled_server_hits_the_idle_timeout(sftp_server: SftpServer) -> None:
    await sftp_server.write("a.csv", (HEADER + csv_rows(10)).encode())
    sftp_server.faults.stall_reads = True
    reads_before = sftp_server.faults.reads
    with pytest.raises(TransientError, match="did not answer in time"):
        async with asyncio.timeout(60):  # a hang detector, not a speed bound
            await collect(CONNECTOR, ctx_for(sftp_server, idle_timeout_s=1))
    assert sftp_server.faults.reads > reads_before  # it was a read that never came back


async def test_large_file_is_parsed_in_worker_processes_chunk_by_chunk(
    sftp_server: SftpServer,
) -> None:
    """1M rows (~60 MB, many times a worker's chunk): parsed in the worker processes,
    chunk by chunk, while the loop keeps ticking (its lag is printed, not asserted)."""
    rows = 1_000_000
    line = "e{0},page_view,2026-01-05T10:00:00Z,u{1},s{1},/p/{2},,\n"

    def write() -> None:
        path = sftp_server.incoming / "huge.csv"
        with path.open("w") as out:
            out.write(HEADER)
            for i in range(rows):
                out.write(line.format(i, i % 1000, i % 50))

    await asyncio.to_thread(write)
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - before - 0.01)

    tick = asyncio.create_task(ticker())
    count = 0
    chunks = 0
    biggest = 0
    parsers: set[int] = set()
    try:
        # A generous idle timeout: two shared cores, the SSH server on this same loop.
        async for batch in CONNECTOR.extract(ctx_for(sftp_server, idle_timeout_s=60)):
            if batch.prepared is None:
                assert batch.rows == []
                continue
            count += batch.prepared.rows
            chunks += 1
            biggest = max(biggest, len(batch.prepared.copy))
            parsers.add(batch.prepared.pid)
    finally:
        stop.set()
        await tick
    assert count == rows
    assert chunks > 20  # bounded pieces, whatever the file size
    assert biggest < 8 * CHUNK_BYTES  # COPY text repeats tenant, source and empty columns
    assert os.getpid() not in parsers
    assert parsers <= set(WORKERS[0].pids())
    lags.sort()
    p99 = lags[int(len(lags) * 0.99)]
    print(
        f"loop lag while importing {rows} rows: "
        f"p99 {p99 * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms"
    )
