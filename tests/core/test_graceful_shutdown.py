"""SIGTERM: in-flight requests complete, then the process exits promptly and cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_for_log(log_file: Path, needle: str) -> None:
    while needle not in await asyncio.to_thread(log_file.read_text):
        await asyncio.sleep(0.05)


async def _waiting_on_lock(observer: asyncpg.Connection) -> int:
    # Outside any transaction: pg_stat_activity is a snapshot per transaction.
    return int(
        await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'pulse' AND wait_event_type = 'Lock'"
        )
    )


async def test_sigterm_lets_in_flight_requests_finish_and_exits(
    database_url: str, tmp_path: Path
) -> None:
    port = await asyncio.to_thread(_free_port)
    log_file = tmp_path / "server.log"
    env = {
        **os.environ,
        "PULSE_ENV": "test",
        "PULSE_DATABASE_URL": database_url,
        "PULSE_READINESS_TIMEOUT_S": "30",
        "PULSE_LOG_FORMAT": "json",
        "PULSE_LOG_LEVEL": "INFO",
    }
    with await asyncio.to_thread(log_file.open, "wb") as log_out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app", "serve", "--port", str(port),
            env=env, stdout=log_out, stderr=log_out,
        )  # fmt: skip
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    admin = await asyncpg.connect(dsn)
    observer = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(60):
            await _wait_for_log(log_file, "Uvicorn running on")
        lock_tx = admin.transaction()
        await lock_tx.start()
        # Readiness reads alembic_version; holding this lock keeps requests in flight.
        await admin.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            in_flight = [asyncio.create_task(http.get("/health/ready")) for _ in range(5)]
            async with asyncio.timeout(20):
                while await _waiting_on_lock(observer) < 5:
                    await asyncio.sleep(0.05)

            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                await _wait_for_log(log_file, "Shutting down")
            await lock_tx.rollback()
            responses = await asyncio.gather(*in_flight)

        assert [r.status_code for r in responses] == [200] * 5
        async with asyncio.timeout(10):
            returncode = await proc.wait()
        log_text = await asyncio.to_thread(log_file.read_text)
        assert returncode == 0, f"exit {returncode}: {log_text}"
        assert "app.stopped" in log_text
    finally:
        await admin.close()
        await observer.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
