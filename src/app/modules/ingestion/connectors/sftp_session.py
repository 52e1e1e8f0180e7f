"""Connecting to an SFTP server for the ``sftp`` connector: host key pinning, auth, errors.

The server's host key is required: either a known_hosts line (or just
``<type> <base64>``), or a ``SHA256:...`` fingerprint. There is no trust on first
use; a server presenting another key is refused, and the error names the key it
presented (its SHA256 fingerprint) so an admin can compare it out of band. A pinned key
of a type the server does not offer (an ECDSA line from ``ssh-keyscan`` for a server
that negotiates ed25519) is terminal too, and the error names the types it offers.
"""

from __future__ import annotations

import asyncio
import stat
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncssh

from app.core.outbound import STRICT, OutboundPolicy, OutboundRefused
from app.modules.ingestion.connectors.base import ConnectorError, TerminalError, TransientError


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    username: str
    host_key: str
    connect_timeout_s: float
    login_timeout_s: float
    keepalive_s: float
    password: str | None = None
    private_key: str | None = None
    passphrase: str | None = None
    outbound: OutboundPolicy | None = None


@dataclass
class HostKeyCheck:
    """Collects what the server presented, for the error message."""

    fingerprint: str | None = None
    presented: str | None = None
    # Host key algorithms the pinned key can be used with (empty for a bare fingerprint).
    pinned_algs: tuple[str, ...] = ()
    # Host key algorithms the server listed in its KEXINIT (None: not seen).
    offered: tuple[str, ...] | None = None
    connection: Any = None

    def server_offered(self) -> tuple[str, ...] | None:
        """The host key types of the server's KEXINIT, read once the connection failed."""
        if self.offered is None and self.connection is not None:
            self.offered = _kexinit_host_key_algs(getattr(self.connection, "_server_kexinit", b""))
        return self.offered

    def type_mismatch(self) -> bool:
        offered = self.server_offered()
        return (
            bool(self.pinned_algs)
            and bool(offered)
            and not set(self.pinned_algs) & set(offered or ())
        )


def _kexinit_host_key_algs(payload: bytes | None) -> tuple[str, ...] | None:
    """The server_host_key_algorithms name-list of an SSH KEXINIT payload (RFC 4253 7.1).

    asyncssh keeps the server's KEXINIT (a private attribute): read defensively, None when
    it is missing or does not parse.
    """
    if not payload or payload[0] != 20:  # SSH_MSG_KEXINIT
        return None
    try:
        offset = 1 + 16  # message type, cookie
        (kex_len,) = struct.unpack_from(">I", payload, offset)
        offset += 4 + kex_len
        (hk_len,) = struct.unpack_from(">I", payload, offset)
        names = payload[offset + 4 : offset + 4 + hk_len].decode("ascii")
    except (struct.error, UnicodeDecodeError):
        return None
    return tuple(n for n in names.split(",") if n)


def _trusted_key(host_key: str) -> asyncssh.SSHKey | None:
    """The key of a known_hosts line (host patterns and markers dropped) or None."""
    parts = host_key.split()
    for start in range(min(3, len(parts))):
        candidate = " ".join(parts[start : start + 2])
        try:
            return asyncssh.import_public_key(candidate)
        except (asyncssh.KeyImportError, ValueError):
            continue
    return None


def _client_factory(fingerprint: str, check: HostKeyCheck) -> type[asyncssh.SSHClient]:
    class PinnedClient(asyncssh.SSHClient):
        def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
            check.connection = conn  # to read the server's KEXINIT if the exchange fails

        def validate_host_public_key(
            self, host: str, addr: str, port: int, key: asyncssh.SSHKey
        ) -> bool:
            presented = key.get_fingerprint("sha256")
            check.presented = presented
            return presented == fingerprint

    return PinnedClient


def load_private_key(text: str, passphrase: str | None) -> asyncssh.SSHKey:
    """Parse the key (slow for encrypted keys: call it off the loop)."""
    try:
        return asyncssh.import_private_key(text, passphrase)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError) as exc:
        raise TerminalError(f"the private key cannot be used: {exc}") from None


def connect_options(
    endpoint: Endpoint, key: asyncssh.SSHKey | None
) -> tuple[dict[str, Any], HostKeyCheck]:
    check = HostKeyCheck()
    options: dict[str, Any] = {
        "port": endpoint.port,
        "username": endpoint.username,
        # Nothing from the machine's ~/.ssh (config, keys, agent, known_hosts).
        "config": [],
        "agent_path": None,
        "client_keys": [key] if key is not None else [],
        "password": endpoint.password,
        "preferred_auth": "publickey,password,keyboard-interactive",
        "connect_timeout": endpoint.connect_timeout_s,
        "login_timeout": endpoint.login_timeout_s,
        "keepalive_interval": endpoint.keepalive_s,
        "keepalive_count_max": 3,
    }
    pinned = endpoint.host_key.strip()
    if pinned.startswith("SHA256:"):
        check.fingerprint = pinned
        options["known_hosts"] = ([], [], [])
        options["client_factory"] = _client_factory(pinned, check)
    else:
        trusted = _trusted_key(pinned)
        if trusted is None:
            raise TerminalError(
                "host_key must be a known_hosts line ('<host> ssh-ed25519 AAAA...') "
                "or a SHA256 fingerprint ('SHA256:...')"
            )
        # Every signature algorithm of the key (an RSA key: rsa-sha2-256/512, not only the
        # SHA-1 "ssh-rsa" that current OpenSSH servers refuse).
        check.pinned_algs = tuple(a.decode() for a in trusted.sig_algorithms)
        check.fingerprint = trusted.get_fingerprint("sha256")
        options["known_hosts"] = ([], [], [])
        options["server_host_key_algs"] = list(check.pinned_algs)
        # The same check as a fingerprint pin: it also records what the server presented.
        options["client_factory"] = _client_factory(check.fingerprint, check)
    return options, check


def classify(exc: BaseException, endpoint: Endpoint, check: HostKeyCheck) -> ConnectorError:
    where = f"{endpoint.username}@{endpoint.host}:{endpoint.port}"
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, OutboundRefused):
        return TerminalError(str(exc))
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        seen = f" (it presented {check.presented})" if check.presented else ""
        return TerminalError(
            f"the server's host key at {where} does not match the configured host key "
            f"{check.fingerprint}{seen}; refusing to connect"
        )
    if check.type_mismatch():
        # The server cannot prove a key of the pinned type: no retry will change that.
        return TerminalError(
            f"the server's host key at {where} does not match the configured host key "
            f"{check.fingerprint} ({', '.join(check.pinned_algs[:2])}): the server offers "
            f"host keys of type {', '.join(check.server_offered() or ())} only"
            f"{_presented(check)}; pin its key of one of those types (ssh-keyscan -t TYPE)"
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return TerminalError(
            f"authentication failed for {where}: check the username and password or key"
        )
    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return TerminalError(f"not found on {where}: {exc.reason}")
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return TerminalError(f"permission denied on {where}: {exc.reason}")
    if isinstance(exc, asyncssh.DisconnectError | asyncssh.ConnectionLost | asyncssh.SFTPError):
        return TransientError(f"SFTP connection to {where} failed: {exc}")
    if isinstance(exc, TimeoutError):
        return TransientError(f"SFTP server {where} did not answer in time")
    if isinstance(exc, OSError):
        return TransientError(f"cannot reach {where}: {exc}")
    return TransientError(f"SFTP error with {where}: {type(exc).__name__}: {exc}")


def _presented(check: HostKeyCheck) -> str:
    return f" (it presented {check.presented})" if check.presented else ""


async def _probe_presented_key(endpoint: Endpoint, check: HostKeyCheck) -> None:
    """After a key type mismatch, fetch the key the server does present (its fingerprint
    goes into the error). Best effort, bounded; a failure only leaves it out."""
    try:
        async with asyncio.timeout(endpoint.connect_timeout_s):
            key = await asyncssh.get_server_host_key(
                endpoint.host,
                endpoint.port,
                server_host_key_algs=list(check.server_offered() or ()),
                config=[],
            )
    except (OSError, TimeoutError, asyncssh.Error, ValueError):
        return
    if key is not None:
        check.presented = f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"


@asynccontextmanager
async def open_sftp(endpoint: Endpoint) -> AsyncIterator[asyncssh.SFTPClient]:
    """An SFTP session; connection and login errors come out classified."""
    key = None
    if endpoint.private_key:
        key = await asyncio.to_thread(load_private_key, endpoint.private_key, endpoint.passphrase)
    if key is None and not endpoint.password:
        raise TerminalError("set secrets.password or secrets.private_key")
    options, check = connect_options(endpoint, key)
    try:
        async with asyncio.timeout(endpoint.connect_timeout_s + endpoint.login_timeout_s + 5):
            # Connect to the address that passed the outbound check, not to the name
            # (which could resolve elsewhere a moment later); the host key is pinned
            # by key, and the alias keeps the configured name for asyncssh's messages.
            target = await (endpoint.outbound or STRICT).resolve(
                endpoint.host, endpoint.port, timeout_s=endpoint.connect_timeout_s
            )
            conn = await asyncssh.connect(target.address, host_key_alias=endpoint.host, **options)
            sftp = await conn.start_sftp_client()
    except Exception as exc:
        if check.type_mismatch():
            await _probe_presented_key(endpoint, check)
        raise classify(exc, endpoint, check) from exc
    try:
        yield sftp
    finally:
        sftp.exit()
        conn.close()
        try:
            async with asyncio.timeout(5):
                await conn.wait_closed()
        except (TimeoutError, OSError, asyncssh.Error):
            pass


def is_regular(attrs: asyncssh.SFTPAttrs) -> bool:
    if attrs.type == asyncssh.FILEXFER_TYPE_REGULAR:
        return True
    return (
        attrs.permissions is not None
        and stat.S_ISREG(attrs.permissions)
        and (attrs.type in (None, asyncssh.FILEXFER_TYPE_UNKNOWN))
    )
