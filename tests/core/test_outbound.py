"""Outbound destination checks: which addresses a tenant-configured host may resolve to."""

from __future__ import annotations

import pytest

from app.core.outbound import OutboundPolicy, OutboundRefused, policy_for
from app.core.settings import Settings, SettingsError, load_settings

NOTHING = OutboundPolicy.from_allow_list("none")


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.64.0.1", "CGNAT"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - refused, not bound
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.10", "not globally routable"),
        ("::ffff:127.0.0.1", "loopback address (embedded in an IPv6 address)"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64 of 169.254.169.254
        ("2002:0a00:0001::1", "private"),  # 6to4 of 10.0.0.1
    ],
)
async def test_non_public_addresses_are_refused_naming_the_address_and_rule(
    address: str, rule: str
) -> None:
    with pytest.raises(OutboundRefused) as refused:
        await NOTHING.resolve(address, 22, timeout_s=5)
    message = str(refused.value)
    assert address in message
    assert rule in message
    assert "PULSE_OUTBOUND_ALLOW" in message


async def test_public_addresses_pass_unchanged() -> None:
    checked = await NOTHING.resolve("8.8.8.8", 22, timeout_s=5)
    assert (checked.host, checked.address, checked.port) == ("8.8.8.8", "8.8.8.8", 22)
    checked = await NOTHING.resolve("[2001:4860:4860::8888]", 22, timeout_s=5)
    assert checked.address == "2001:4860:4860::8888"


@pytest.mark.parametrize(
    "host", ["metadata.google.internal", "METADATA.google.internal.", "metadata"]
)
async def test_metadata_host_names_are_refused_without_resolving(host: str) -> None:
    with pytest.raises(OutboundRefused, match="metadata host name"):
        await NOTHING.resolve(host, 80, timeout_s=5)


async def test_a_name_resolving_to_loopback_is_refused_with_its_resolved_address() -> None:
    with pytest.raises(OutboundRefused) as refused:
        await NOTHING.resolve("localhost", 22, timeout_s=5)
    assert "localhost (" in str(refused.value)
    assert "loopback" in str(refused.value)


async def test_allowed_networks_and_names_let_a_destination_through() -> None:
    by_network = OutboundPolicy.from_allow_list("10.0.0.0/8, 127.0.0.1/32")
    assert (await by_network.resolve("10.1.2.3", 22, timeout_s=5)).address == "10.1.2.3"
    assert (await by_network.resolve("127.0.0.1", 22, timeout_s=5)).address == "127.0.0.1"
    with pytest.raises(OutboundRefused):
        await by_network.resolve("169.254.169.254", 22, timeout_s=5)
    by_name = OutboundPolicy.from_allow_list("localhost,metadata.google.internal")
    assert (await by_name.resolve("LOCALHOST", 22, timeout_s=5)).host == "LOCALHOST"
    with pytest.raises(OutboundRefused):
        await by_name.resolve("127.0.0.1", 22, timeout_s=5)  # the name is allowed, not the IP


async def test_every_resolved_address_must_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import socket

    loop = asyncio.get_running_loop()

    async def two_answers(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", two_answers)
    with pytest.raises(OutboundRefused, match=r"sftp\.example \(10\.0\.0\.7\)"):
        await NOTHING.resolve("sftp.example", 22, timeout_s=5)


def test_endpoint_overrides_need_an_explicitly_allowed_host() -> None:
    with pytest.raises(OutboundRefused, match="endpoint override"):
        NOTHING.check_endpoint("https://bigquery.example.com")
    with pytest.raises(OutboundRefused, match=r"127\.0\.0\.1"):
        NOTHING.check_endpoint("http://127.0.0.1:9050")
    allowed = OutboundPolicy.from_allow_list("127.0.0.1/32,bq.internal")
    allowed.check_endpoint("http://127.0.0.1:9050")
    allowed.check_endpoint("https://BQ.internal/")
    with pytest.raises(OutboundRefused):
        allowed.check_endpoint("http://127.0.0.2:9050")


def test_the_default_allows_loopback_in_development_and_test_only() -> None:
    url = "postgresql://u@h/db"
    dev = policy_for(Settings(env="development", database_url=url))
    prod = policy_for(Settings(env="production", database_url=url, secret_key="k"))
    explicit = policy_for(Settings(env="development", database_url=url, outbound_allow="none"))
    dev.check_endpoint("http://127.0.0.1:9050")
    for strict in (prod, explicit):
        with pytest.raises(OutboundRefused):
            strict.check_endpoint("http://127.0.0.1:9050")


def test_a_bad_allow_list_entry_is_a_configuration_error() -> None:
    with pytest.raises(SettingsError, match="PULSE_OUTBOUND_ALLOW: 'not a host' is neither"):
        load_settings({"PULSE_OUTBOUND_ALLOW": "10.0.0.0/8,not a host"}, dotenv=None)
    settings = load_settings({"PULSE_OUTBOUND_ALLOW": "10.0.0.0/8, sftp.corp"}, dotenv=None)
    assert settings.outbound_allow == "10.0.0.0/8, sftp.corp"
