"""Absolute links in emails: they are read outside the app, so they need its public URL."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.core.settings import Settings


@dataclass(frozen=True, slots=True)
class EmailLinks:
    """Built once from the settings by whoever queues emails with links (the import
    runner) and handed to :func:`notify_run_outcome`; no process-wide state."""

    base_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> EmailLinks:
        """``PULSE_PUBLIC_URL``, or the address the server listens on."""
        return cls((settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/"))

    def run(self, tenant_id: str, run_id: uuid.UUID) -> str:
        return f"{self.base_url}/api/v1/tenants/{tenant_id}/runs/{run_id}"
