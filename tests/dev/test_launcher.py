"""`python -m app dev` brings up Pulse with its world and real data flowing, twice."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(900)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _read(path: Path) -> str:
    return await asyncio.to_thread(path.read_text, errors="replace")


class Launcher:
    def __init__(self, data_dir: Path, port: int, out: Path) -> None:
        self.data_dir, self.port, self.out = data_dir, port, out
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> dict[str, str]:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PULSE_")},
            "PULSE_ENV": "development",
            "PULSE_DATA_DIR": str(self.data_dir),
            "PULSE_PORT": str(self.port),
            "PULSE_LOG_FORMAT": "json",
        }
        with await asyncio.to_thread(self.out.open, "wb") as sink:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "app", "dev", "--demo-scale", "0.15",
                env=env, stdout=sink, stderr=sink,
            )  # fmt: skip
        async with asyncio.timeout(300):
            while "Ctrl-C stops everything" not in (text := await _read(self.out)):
                assert self.proc.returncode is None, text[-3000:]
                await asyncio.sleep(0.2)
        lines = text.splitlines()
        return {
            "admin": lines[lines.index("demo admin token:") + 1].strip(),
            "viewer": lines[lines.index("acme viewer token:") + 1].strip(),
            "banner": text,
        }

    async def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            return await self.proc.wait()


async def _runs_settled(api: httpx.AsyncClient, tenant: str) -> list[dict[str, Any]]:
    """Wait until every source of ``tenant`` has a succeeded run; return the runs."""
    sources = (await api.get(f"/api/v1/tenants/{tenant}/sources")).json()["items"]
    async with asyncio.timeout(420):
        while True:
            runs = (await api.get(f"/api/v1/tenants/{tenant}/runs?limit=100")).json()["items"]
            done = {r["source_id"] for r in runs if r["status"] == "succeeded"}
            failed = [r for r in runs if r["status"] == "failed"]
            assert not failed, failed
            if {s["id"] for s in sources} <= done:
                return [r for r in runs if r["status"] == "succeeded"]
            await asyncio.sleep(1)


ADMIN_NOTIFICATIONS = {
    "recipients": ["ops@demo.example", "cto@demo.example"],
    "alerts": {"import_failed": True, "import_succeeded": True, "source_recovered": False},
    "digest": {"enabled": True, "weekday": 5, "hour": 17},
}


def _sftp_port(banner: str) -> int:
    match = re.search(r"sftp -P (\d+) demo@127\.0\.0\.1", banner)
    assert match, banner
    return int(match.group(1))


async def test_dev_launcher_imports_demo_data_and_restarts_without_duplicates(
    tmp_path: Path,
) -> None:
    # Not under pytest's private tmp_path: the embedded server runs as another system user.
    data_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="pulse-dev-", dir="/tmp"))
    await asyncio.to_thread(data_dir.chmod, 0o755)
    port = await asyncio.to_thread(_free_port)
    base = f"http://127.0.0.1:{port}"

    first = Launcher(data_dir, port, tmp_path / "first.log")
    tokens = await first.start()
    try:
        assert f"{base}/schema" in tokens["banner"]
        assert "/stats/summary" in tokens["banner"]
        # The banner is also kept in a file, with the SFTP login and the mail catcher.
        saved = await _read(data_dir / "banner.txt")
        sftp_port = _sftp_port(saved)
        assert "password demo-sftp-password" in saved
        assert f"{base}/dev/mail" in saved
        assert "SMTP catcher on 127.0.0.1:" in saved
        assert "development picker" in saved
        assert saved.strip() in tokens["banner"]
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        async with httpx.AsyncClient(base_url=base, headers=admin, timeout=60) as api:
            sources = (await api.get("/api/v1/tenants/demo/sources")).json()["items"]
            kinds = sorted(s["kind"] for s in sources)
            assert kinds.count("sftp") == 2
            assert "bigquery_ga4" in kinds
            runs = await _runs_settled(api, "demo")
            by_kind = {s["id"]: s["kind"] for s in sources}
            loaded = {by_kind[r["source_id"]]: r["progress"]["rows_loaded"] for r in runs}
            assert loaded["sftp"] > 0
            assert loaded["bigquery_ga4"] > 0
            summary = (
                await api.get(
                    "/api/v1/tenants/demo/stats/summary?date_range=30d&compare=previous_period"
                )
            ).json()
            totals_before = summary["totals"]
            for metric in ("users", "sessions", "pageviews"):
                assert totals_before[metric] > 0, summary
            # The demo history covers the default comparison (30 days against the 30 before).
            previous = summary["comparison"]["totals"]
            assert previous["sessions"] > 0.5 * totals_before["sessions"], summary
            # An admin changes the notification settings; a restart must keep them.
            changed = await api.put("/api/v1/tenants/demo/notifications", json=ADMIN_NOTIFICATIONS)
            assert changed.status_code == 200, changed.text
            # ...and a source's schedule and settle time.
            csv = next(s for s in sources if s["config"].get("format") == "csv")
            edited = await api.patch(
                f"/api/v1/tenants/demo/sources/{csv['id']}",
                json={"schedule": {"interval_s": 3600}, "config": {**csv["config"], "settle_s": 7}},
            )
            assert edited.status_code == 200, edited.text
            page = await api.get("/dev/mail")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")

        viewer = {"Authorization": f"Bearer {tokens['viewer']}"}
        async with httpx.AsyncClient(base_url=base, headers=viewer, timeout=60) as api:
            assert (await api.get("/api/v1/tenants/acme/stats/summary")).status_code == 200
            assert (await api.get("/api/v1/tenants/demo/stats/summary")).status_code == 404
    finally:
        assert await first.stop() == 0

    second = Launcher(data_dir, port, tmp_path / "second.log")
    tokens = await second.start()
    try:
        # Same SFTP port and host key: the sources need no change.
        assert _sftp_port(tokens["banner"]) == sftp_port
        assert "dev.source_moved" not in tokens["banner"]
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        async with httpx.AsyncClient(base_url=base, headers=admin, timeout=60) as api:
            again = (await api.get("/api/v1/tenants/demo/sources")).json()["items"]
            assert sorted(s["id"] for s in again) == sorted(s["id"] for s in sources)
            summary = (await api.get("/api/v1/tenants/demo/stats/summary?date_range=30d")).json()
            assert summary["totals"]["pageviews"] == totals_before["pageviews"]
            kept = (await api.get("/api/v1/tenants/demo/notifications")).json()
            assert kept["recipients"] == ADMIN_NOTIFICATIONS["recipients"]
            assert kept["alerts"] == ADMIN_NOTIFICATIONS["alerts"]
            assert kept["digest"] == ADMIN_NOTIFICATIONS["digest"]
            csv_after = next(s for s in again if s["id"] == csv["id"])
            assert csv_after["schedule"]["interval_s"] == 3600
            assert csv_after["config"]["settle_s"] == 7
            # The SFTP sources still reach the development server after the restart.
            for source in (s for s in again if s["kind"] == "sftp"):
                path = f"/api/v1/tenants/demo/sources/{source['id']}"
                checked = await api.post(f"{path}/test")
                assert checked.status_code == 200, checked.text
                assert checked.json()["ok"] is True, checked.text
                run = await api.post(f"{path}/runs", json={})
                assert run.status_code in (201, 202, 409), run.text
            await _runs_settled(api, "demo")
    finally:
        assert await second.stop() == 0
