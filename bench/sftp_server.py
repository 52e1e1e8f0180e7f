"""A loopback SFTP server (asyncssh) serving one directory, on its own loop and thread.

asyncssh's SFTP server does blocking file I/O, so it never shares a loop with anything
measured.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import asyncssh

USERNAME = "bench"


@dataclass(frozen=True)
class SftpEndpoint:
    host: str
    port: int
    username: str
    password: str
    host_key: str  # "SHA256:..." fingerprint, as the connector's config wants it


class _Server(asyncssh.SSHServer):
    def __init__(self, password: str) -> None:
        self._password = password

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == USERNAME and password == self._password


class SftpServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.password = secrets.token_urlsafe(12)
        self._key = asyncssh.generate_private_key("ssh-ed25519")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="bench-sftp", daemon=True
        )
        self._acceptor: asyncssh.SSHAcceptor | None = None

    def start(self) -> SftpEndpoint:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self._acceptor = future.result(timeout=15)
        return SftpEndpoint(
            host="127.0.0.1",
            port=self._acceptor.get_port(),
            username=USERNAME,
            password=self.password,
            host_key=self._key.get_fingerprint("sha256"),
        )

    async def _listen(self) -> asyncssh.SSHAcceptor:
        root = str(self.root).encode()
        return await asyncssh.create_server(
            lambda: _Server(self.password),
            "127.0.0.1",
            0,
            server_host_keys=[self._key],
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root),
            allow_scp=False,
        )

    def stop(self) -> None:
        acceptor = self._acceptor
        if acceptor is not None:

            async def close() -> None:
                acceptor.close()
                await acceptor.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=15)
