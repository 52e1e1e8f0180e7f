"""Typed dependencies of the ingestion routes: what the lifespan (and core) set up, so
no route reads ``app.state`` itself."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
from litestar.datastructures import State
from litestar.di import Provide

from app.core.crypto import SecretBox
from app.modules.ingestion.state import IngestionState, ingestion_state


class RunnerSignals:
    """Nudges for this process's runner, sent after a response (so after the commit);
    no-ops while no runner runs here."""

    def __init__(self, runtime: IngestionState | None) -> None:
        self._runtime = runtime

    # Async so that Litestar runs them on the loop (a sync background task goes to a
    # thread, where the runner's asyncio events must not be touched).
    async def wake(self) -> None:
        if self._runtime is not None and self._runtime.runner is not None:
            self._runtime.runner.wake()

    async def request_cancel(self, run_id: uuid.UUID) -> None:
        if self._runtime is not None and self._runtime.runner is not None:
            self._runtime.runner.request_cancel(run_id)


def provide_runner_signals(state: State) -> RunnerSignals:
    return RunnerSignals(getattr(state, "ingestion", None))


def provide_secret_box(state: State) -> SecretBox:
    """The key that seals source secrets (503 while ingestion is not running)."""
    return ingestion_state(state).secret_box


def provide_http_client(state: State) -> httpx.AsyncClient | None:
    """The app's shared HTTP client (core's lifespan)."""
    http: httpx.AsyncClient | None = getattr(state, "http", None)
    return http


def provide_bigquery_pool(state: State) -> ThreadPoolExecutor | None:
    """The bounded thread pool BigQuery's blocking client runs on (core's lifespan)."""
    pool: ThreadPoolExecutor | None = getattr(state, "bigquery_pool", None)
    return pool


dependencies = {
    "runner_signals": Provide(provide_runner_signals, sync_to_thread=False),
    "secret_box": Provide(provide_secret_box, sync_to_thread=False),
    "http_client": Provide(provide_http_client, sync_to_thread=False),
    "bigquery_pool": Provide(provide_bigquery_pool, sync_to_thread=False),
}
