"""Embedded PostgreSQL for development: the ``pgserver`` wheel ships the binaries.

Blocking (it runs ``initdb``/``pg_ctl``): call it from a worker thread or before
the event loop starts, never from a coroutine directly.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def start_embedded_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) the embedded server under ``data_dir/postgres``.

    Returns the asyncpg URL and the server handle; the server stops when the last
    handle in this process is released or the process exits.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        import pgserver

        data_dir.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(data_dir / "postgres", cleanup_mode="stop")  # type: ignore[attr-defined]
    socket_dir = server.get_postmaster_info().socket_dir
    return f"postgresql+asyncpg://postgres@/postgres?host={socket_dir}", server
