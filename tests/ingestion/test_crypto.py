"""Secrets at rest: authenticated encryption, key rotation, development key file."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from app.core.crypto import DecryptionFailed, SecretBox, SecretKeyMissing, load_secret_box
from app.modules.ingestion import service
from app.modules.ingestion.secrets import associated_data
from tests.conftest import make_settings
from tests.fixtures.ingestion import IngestKit


def test_round_trip_is_bound_to_its_associated_data() -> None:
    box = SecretBox(["k1"])
    token = box.encrypt(b'{"password":"hunter2"}', associated_data="acme:1")
    assert b"hunter2" not in token.encode()
    assert box.decrypt(token, associated_data="acme:1") == b'{"password":"hunter2"}'
    with pytest.raises(DecryptionFailed):
        box.decrypt(token, associated_data="other:1")


def test_tampered_ciphertext_does_not_decrypt() -> None:
    box = SecretBox(["k1"])
    token = box.encrypt(b"secret", associated_data="a")
    prefix, key_id, body = token.split(":")
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[15] ^= 0x01  # one bit of the ciphertext
    flipped = f"{prefix}:{key_id}:{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    with pytest.raises(DecryptionFailed):
        box.decrypt(flipped, associated_data="a")


def test_rotation_old_keys_decrypt_and_reencrypt_moves_to_the_new_key() -> None:
    old = SecretBox(["old-key"])
    token = old.encrypt(b"secret", associated_data="a")
    rotated = SecretBox.from_setting("new-key,old-key")
    assert rotated.decrypt(token, associated_data="a") == b"secret"
    assert rotated.needs_reencryption(token)
    fresh = rotated.reencrypt(token, associated_data="a")
    assert not rotated.needs_reencryption(fresh)
    with pytest.raises(DecryptionFailed):
        SecretBox(["new-key"]).decrypt(token, associated_data="a")
    assert SecretBox(["new-key"]).decrypt(fresh, associated_data="a") == b"secret"


async def test_development_key_is_generated_once_under_the_data_dir(tmp_path: Path) -> None:
    settings = make_settings(
        "postgresql://x/y", env="development", secret_key=None, data_dir=str(tmp_path / "data")
    )
    first = await asyncio.to_thread(load_secret_box, settings)
    key_file = tmp_path / "data" / "secret.key"
    assert await asyncio.to_thread(key_file.is_file)
    assert oct((await asyncio.to_thread(key_file.stat)).st_mode & 0o777) == "0o600"
    second = await asyncio.to_thread(load_secret_box, settings)
    token = first.encrypt(b"x", associated_data="a")
    assert second.decrypt(token, associated_data="a") == b"x"


def test_production_refuses_to_run_without_a_key() -> None:
    settings = make_settings("postgresql://x/y", env="production", secret_key=None)
    with pytest.raises(SecretKeyMissing):
        load_secret_box(settings)


async def test_reencrypting_sources_lets_the_old_key_go(ingest: IngestKit) -> None:
    await ingest.tenant()
    source = await ingest.source(secrets={"token": "t0ps3cret"})
    rotated = SecretBox.from_setting(f"brand-new-key,{ingest.settings.secret_key}")
    async with ingest.db.session(all_tenants=True) as session:
        assert await service.reencrypt_secrets(session, rotated) == 1
        await session.commit()
        assert await service.reencrypt_secrets(session, rotated) == 0
    token = await ingest.scalar(
        "SELECT secrets_ciphertext FROM ingestion_sources WHERE id = :id", id=source.id
    )
    only_new = SecretBox(["brand-new-key"])
    plain = only_new.decrypt(token, associated_data=associated_data("acme", source.id))
    assert b"t0ps3cret" in plain
