"""What the ingestion module keeps on ``app.state.ingestion`` while the app runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.core.crypto import SecretBox
from app.core.errors import Unavailable

if TYPE_CHECKING:
    from app.core.workers import WorkerPool
    from app.modules.ingestion.runner import Runner
    from app.modules.ingestion.scheduler import Scheduler


@dataclass
class IngestionState:
    secret_box: SecretBox
    runner: Runner | None = None
    scheduler: Scheduler | None = None
    workers: WorkerPool | None = None


def ingestion_state(state: Any) -> IngestionState:
    found: IngestionState | None = getattr(state, "ingestion", None)
    if found is None:
        raise Unavailable("ingestion is not running")
    return found
