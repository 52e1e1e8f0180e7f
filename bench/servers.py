"""Processes under test: Pulse (``python -m app serve``) and the FastAPI peer, each a real
uvicorn process on loopback, with its logs in a file and its memory read from /proc."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.database import DATA_ROOT, ROOT, Dataset
from bench.issuer import CLIENT_ID, CLIENT_SECRET, Issuer

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of a process, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory(self) -> dict[str, int]:
        return proc_status(self.pid)

    def log_events(self, event: str) -> list[dict[str, object]]:
        """Structured (JSON) log lines of this process with ``event``."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if event not in line or not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                found.append(record)
        return found


def blocked_summary(log_path: Path, top: int = 4) -> list[dict[str, object]]:
    """The watchdog's ``loop.blocked`` reports in a Pulse log, grouped by the innermost
    application frames on the loop at the time: what held the event loop."""
    groups: dict[tuple[str, ...], list[float]] = {}
    if not log_path.exists():
        return []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"loop.blocked"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        frames = [
            f.strip().replace(str(Path(sys.prefix).parent) + "/", "")
            for f in str(record.get("stack", "")).splitlines()
            if f.strip().startswith("File") and ("/src/app/" in f or "site-packages" in f)
        ]
        key = tuple(frames[-2:])
        groups.setdefault(key, []).append(float(record.get("blocked_ms", 0)))
    ranked = sorted(groups.items(), key=lambda item: -len(item[1]))[:top]
    return [
        {"count": len(ms), "max_blocked_ms": max(ms), "frames": list(frames)}
        for frames, ms in ranked
    ]


def _wait_ready(server: Server, path: str, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{tail}")
        try:
            response = httpx.get(server.url + path, timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready after {deadline_s}s: {last}")


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


def pulse_env(dataset: Dataset, issuer: Issuer, port: int, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(
        {
            "PULSE_ENV": "production",
            "PULSE_HOST": "127.0.0.1",
            "PULSE_PORT": str(port),
            "PULSE_DATABASE_URL": dataset.app_url,
            "PULSE_SECRET_KEY": "bench-secret-key-not-for-production",
            "PULSE_DATA_DIR": str(DATA_ROOT / "pulse"),
            "PULSE_LOG_FORMAT": "json",
            "PULSE_LOG_LEVEL": "WARNING",
            "PULSE_OIDC_ISSUER": issuer.issuer,
            "PULSE_OIDC_INTROSPECTION_URL": issuer.introspection_url,
            "PULSE_OIDC_INTROSPECTION_CLIENT_ID": CLIENT_ID,
            "PULSE_OIDC_INTROSPECTION_CLIENT_SECRET": CLIENT_SECRET,
            # Operator only through an explicit grant (bench/issuer.py sets this claim).
            "PULSE_OIDC_OPERATOR_CLAIM": "pulse_platform",
            "PULSE_OIDC_OPERATOR_VALUE": "operator",
            # The benchmark measures capacity, not the per-tenant rate limit.
            "PULSE_STATS_RATE_LIMIT_PER_MINUTE": "1000000000",
            "PULSE_INGEST_POLL_INTERVAL_S": "0.5",
            # The bench's SFTP server and BigQuery fake listen on loopback, which a
            # production Pulse refuses to reach unless the operator allows it.
            "PULSE_OUTBOUND_ALLOW": "127.0.0.1/32",
        }
    )
    env.update(overrides)
    return env


@contextmanager
def run_process(
    name: str, argv: list[str], env: Mapping[str, str], url: str, ready_path: str
) -> Iterator[Server]:
    logs = DATA_ROOT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    cwd = DATA_ROOT / "cwd"  # not the checkout: Pulse would read the developer's .env
    cwd.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 - our own processes
            argv, env=dict(env), cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT
        )
        server = Server(name=name, process=process, url=url, log_path=log_path)
        try:
            _wait_ready(server, ready_path, 90)
            yield server
        finally:
            _stop(server)


@contextmanager
def pulse(
    dataset: Dataset, issuer: Issuer, name: str = "pulse", **overrides: str
) -> Iterator[Server]:
    """Pulse as it runs in production: ``python -m app serve`` (uvicorn, uvloop)."""
    port = free_port()
    env = pulse_env(dataset, issuer, port, **overrides)
    with run_process(
        name, [PYTHON, "-m", "app", "serve"], env, f"http://127.0.0.1:{port}", "/health/ready"
    ) as server:
        yield server


@contextmanager
def peer(dataset: Dataset) -> Iterator[Server]:
    """The conventional FastAPI + SQLAlchemy peer (bench/peer.py) under uvicorn."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env["BENCH_PEER_DATABASE_URL"] = dataset.url
    env["PYTHONPATH"] = str(ROOT)
    argv = [
        PYTHON,
        "-m",
        "uvicorn",
        "bench.peer:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with run_process("peer", argv, env, f"http://127.0.0.1:{port}", "/health") as server:
        yield server


@contextmanager
def ceiling_server(
    mode: str, body: Path, dsn: str = "", statements: Path | None = None
) -> Iterator[Server]:
    """A minimal Litestar app (bench/ceiling_app.py) served as Pulse is served."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "BENCH_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "BENCH_CEILING_MODE": mode,
            "BENCH_CEILING_BODY": str(body),
            "BENCH_CEILING_DSN": dsn,
            "BENCH_CEILING_STATEMENTS": str(statements or ""),
        }
    )
    argv = [
        PYTHON,
        "-m",
        "uvicorn",
        "--factory",
        "bench.ceiling_app:create",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    url = f"http://127.0.0.1:{port}"
    with run_process(f"ceiling-{mode}", argv, env, url, "/health") as server:
        yield server
