"""An SFTP server for development (asyncssh), serving the generated drop files.

asyncssh's SFTP server does plain file I/O, so it runs on its own event loop in a
background thread and never stalls Pulse's loop.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

import asyncssh


@dataclass(frozen=True)
class DevSftp:
    host: str
    port: int
    username: str
    password: str
    host_key_fingerprint: str
    root: Path


class _Server(asyncssh.SSHServer):
    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == self._username and password == self._password


def _host_key(path: Path) -> asyncssh.SSHKey:
    if path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    key.write_private_key(path)
    path.chmod(0o600)
    return key


class DevSftpThread:
    """Owns the thread, its loop and the server; ``start()`` and ``stop()`` are blocking."""

    def __init__(self, root: Path, key_path: Path, username: str, password: str) -> None:
        self._root = root
        self._key_path = key_path
        self._username = username
        self._password = password
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dev-sftp", daemon=True)
        self._server: asyncssh.SSHAcceptor | None = None

    def start(self, port: int = 0) -> DevSftp:
        """Listen on ``port`` (the one of the last start) or, when it is taken, on any."""
        key = _host_key(self._key_path)
        self._thread.start()
        try:
            future = asyncio.run_coroutine_threadsafe(self._listen(key, port), self._loop)
            self._server = future.result(timeout=10)
        except OSError:
            if port == 0:
                raise
            future = asyncio.run_coroutine_threadsafe(self._listen(key, 0), self._loop)
            self._server = future.result(timeout=10)
        port = self._server.get_port()
        return DevSftp(
            host="127.0.0.1",
            port=port,
            username=self._username,
            password=self._password,
            host_key_fingerprint=key.get_fingerprint("sha256"),
            root=self._root,
        )

    async def _listen(self, key: asyncssh.SSHKey, port: int) -> asyncssh.SSHAcceptor:
        root = str(self._root)
        return await asyncssh.create_server(
            lambda: _Server(self._username, self._password),
            "127.0.0.1",
            port,
            server_host_keys=[key],
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root.encode()),
            allow_scp=False,
        )

    def stop(self) -> None:
        if self._server is not None:
            server = self._server

            async def close() -> None:
                server.close()
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
