"""SFTP host-key pinning errors: terminal, and they say what the server presented."""

from __future__ import annotations

import asyncssh
import pytest

from app.modules.ingestion.connectors.base import TerminalError
from app.modules.ingestion.connectors.sftp import SftpConnector
from tests.connectors.helpers import collect, extract_context, source_context
from tests.fixtures.sftp import SftpServer

CONNECTOR = SftpConnector()


def _line(server: SftpServer, key: asyncssh.SSHKey) -> str:
    return f"[127.0.0.1]:{server.port} {key.export_public_key().decode().strip()}"


async def test_pinned_key_of_a_type_the_server_does_not_offer_is_terminal_and_names_its_types(
    sftp_server: SftpServer,
) -> None:
    # What `ssh-keyscan` without -t may hand an admin: an ECDSA line, while the server
    # negotiates ed25519 only.
    ecdsa = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    ctx = extract_context(
        CONNECTOR, sftp_server.config(host_key=_line(sftp_server, ecdsa)), sftp_server.secrets()
    )
    with pytest.raises(TerminalError) as raised:
        await collect(CONNECTOR, ctx)
    message = str(raised.value)
    assert "ssh-ed25519" in message  # the type the server offers
    assert "ecdsa-sha2-nistp256" in message  # the type pinned
    assert str(ecdsa.get_fingerprint("sha256")) in message
    assert sftp_server.fingerprint in message  # the key it does present

    result = await CONNECTOR.test(
        source_context(
            CONNECTOR, sftp_server.config(host_key=_line(sftp_server, ecdsa)), sftp_server.secrets()
        )
    )
    assert not result.ok
    assert "ssh-ed25519" in result.checks[-1].detail


async def test_known_hosts_line_of_another_key_names_the_presented_fingerprint(
    sftp_server: SftpServer,
) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    ctx = extract_context(
        CONNECTOR, sftp_server.config(host_key=_line(sftp_server, other)), sftp_server.secrets()
    )
    with pytest.raises(TerminalError, match="does not match the configured host key") as raised:
        await collect(CONNECTOR, ctx)
    assert sftp_server.fingerprint in str(raised.value)
    assert str(other.get_fingerprint("sha256")) in str(raised.value)


async def test_known_hosts_line_of_the_servers_key_still_connects(sftp_server: SftpServer) -> None:
    result = await CONNECTOR.test(
        source_context(CONNECTOR, sftp_server.config(), sftp_server.secrets())
    )
    assert result.checks[0].name == "connection"
    assert result.checks[0].ok, result.checks
