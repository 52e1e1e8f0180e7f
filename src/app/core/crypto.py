"""Encryption of secrets at rest (source credentials): AES-256-GCM under rotating keys.

``PULSE_SECRET_KEY`` holds one or more comma-separated keys (any high-entropy
strings); the first encrypts, all decrypt, so rotation is: put the new key first,
keep the old one after it, re-encrypt (``SecretBox.reencrypt``), then drop the old
key. Each key is stretched to 256 bits with HKDF. A ciphertext names its key by a
short id and is bound to an *associated data* string (for example the tenant and
source id), so a ciphertext copied onto another record does not decrypt.

In development with no key configured one is generated once under the data
directory (``.data/secret.key``); production refuses to start without a key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.core.settings import Settings

_PREFIX = "v1"
_NONCE_BYTES = 12
DEV_KEY_FILE = "secret.key"


class SecretKeyMissing(RuntimeError):
    """No key configured where one is required (production)."""


class DecryptionFailed(Exception):
    """Wrong key, unknown key id, tampered ciphertext or wrong associated data."""


def _derive(secret: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"pulse-secrets", info=b"aes-256-gcm-v1"
    ).derive(secret.encode())


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"pulse-kid" + key).hexdigest()[:8]


class SecretBox:
    """Authenticated encryption with a list of keys: the first encrypts, all decrypt."""

    def __init__(self, secret_keys: list[str]) -> None:
        keys = [k.strip() for k in secret_keys if k.strip()]
        if not keys:
            raise SecretKeyMissing("at least one secret key is required")
        derived = [_derive(k) for k in keys]
        self._primary = derived[0]
        self._primary_id = _key_id(derived[0])
        self._by_id = {_key_id(k): AESGCM(k) for k in derived}

    @classmethod
    def from_setting(cls, value: str) -> SecretBox:
        return cls(value.split(","))

    @property
    def primary_key_id(self) -> str:
        return self._primary_id

    def encrypt(self, plaintext: bytes, *, associated_data: str) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._by_id[self._primary_id].encrypt(nonce, plaintext, associated_data.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode()
        return f"{_PREFIX}:{self._primary_id}:{body}"

    def decrypt(self, token: str, *, associated_data: str) -> bytes:
        try:
            prefix, key_id, body = token.split(":", 2)
            raw = base64.urlsafe_b64decode(body.encode())
        except ValueError as exc:
            raise DecryptionFailed("malformed ciphertext") from exc
        aead = self._by_id.get(key_id)
        if prefix != _PREFIX or aead is None:
            raise DecryptionFailed(f"ciphertext key {key_id!r} is not among the configured keys")
        try:
            return aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], associated_data.encode())
        except InvalidTag as exc:
            raise DecryptionFailed("ciphertext does not authenticate") from exc

    def needs_reencryption(self, token: str) -> bool:
        return not token.startswith(f"{_PREFIX}:{self._primary_id}:")

    def reencrypt(self, token: str, *, associated_data: str) -> str:
        """Re-encrypt under the primary key (key rotation)."""
        return self.encrypt(
            self.decrypt(token, associated_data=associated_data), associated_data=associated_data
        )


def load_secret_box(settings: Settings) -> SecretBox:
    """The box for ``settings``. Blocking (may create the dev key file): call off the loop."""
    if settings.secret_key:
        return SecretBox.from_setting(settings.secret_key)
    if settings.is_production:
        raise SecretKeyMissing("PULSE_SECRET_KEY is required when PULSE_ENV=production")
    return SecretBox([_development_key(settings.data_path)])


def _development_key(data_dir: Path) -> str:
    path = data_dir / DEV_KEY_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    # O_EXCL: two processes starting at once keep one key between them.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return key
