"""A runner in its own process, for the crash test.

``python -m tests.ingestion.worker_process URL OWNER``

Runs until killed. Uses the same fast lease settings as the in-process tests.
"""

from __future__ import annotations

import asyncio
import sys

from app.core.crypto import SecretBox
from app.core.db import Database
from app.modules.ingestion.runner import Runner
from tests.fixtures.ingestion import fast_settings


async def main(url: str, owner: str) -> None:
    settings = fast_settings(url)
    db = Database.from_settings(settings, url)
    runner = Runner(db, settings, SecretBox.from_setting(settings.secret_key or ""), owner=owner)
    print("ready", flush=True)
    await runner.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
