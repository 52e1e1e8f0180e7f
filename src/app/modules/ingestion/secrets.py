"""Source secrets: validated per kind, sealed with the app's SecretBox, opened only to run."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from app.core.crypto import SecretBox
from app.modules.ingestion.connectors.base import Connector


def associated_data(tenant_id: str, source_id: uuid.UUID) -> str:
    # Binds a ciphertext to its source: copied onto another row it does not decrypt.
    return f"pulse-source:{tenant_id}:{source_id}"


def seal(box: SecretBox, tenant_id: str, source_id: uuid.UUID, secrets: msgspec.Struct) -> str:
    return box.encrypt(
        msgspec.json.encode(secrets), associated_data=associated_data(tenant_id, source_id)
    )


def secret_fields(secrets: msgspec.Struct) -> list[str]:
    """Names of the secrets that are set (shown in the API instead of the values)."""
    return [
        name
        for name in secrets.__struct_fields__
        if getattr(secrets, name) not in (None, "", [], {})
    ]


def open_secrets(
    box: SecretBox,
    connector: Connector,
    *,
    tenant_id: str,
    source_id: uuid.UUID,
    ciphertext: str | None,
) -> Any:
    """Decrypt and type the source's secrets (``DecryptionFailed``/``ValidationError`` raise)."""
    if ciphertext is None:
        return msgspec.convert({}, connector.secrets_type)
    plain = box.decrypt(ciphertext, associated_data=associated_data(tenant_id, source_id))
    return msgspec.json.decode(plain, type=connector.secrets_type)
