"""The connector registry: kind -> connector (with its config and secrets Structs)."""

from __future__ import annotations

import importlib

from app.modules.ingestion.connectors.base import (
    Batch,
    Connector,
    ConnectorError,
    DateWindow,
    ExtractContext,
    LedgerEntry,
    Progress,
    Reject,
    RunCancelled,
    SourceContext,
    TerminalError,
    TestCheck,
    TestResult,
    TransientError,
)

# Modules whose import registers a built-in connector. Later connectors add themselves here.
BUILTIN_MODULES: tuple[str, ...] = (
    "app.modules.ingestion.connectors.synthetic",
    "app.modules.ingestion.connectors.bigquery",
    "app.modules.ingestion.connectors.sftp",
)

_REGISTRY: dict[str, Connector] = {}
_loaded = False


def register_connector(connector: Connector) -> None:
    """Make ``connector`` available for its kind (tests register fakes this way)."""
    _REGISTRY[connector.kind] = connector


def unregister_connector(kind: str) -> None:
    _REGISTRY.pop(kind, None)


def load_builtin_connectors() -> None:
    """Import the built-in connectors (their SDKs are slow to import: do it at start-up)."""
    _load_builtins()


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for name in BUILTIN_MODULES:
            importlib.import_module(name)
        _loaded = True


def get_connector(kind: str) -> Connector | None:
    _load_builtins()
    return _REGISTRY.get(kind)


def connector_kinds() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


__all__ = [
    "BUILTIN_MODULES",
    "Batch",
    "Connector",
    "ConnectorError",
    "DateWindow",
    "ExtractContext",
    "LedgerEntry",
    "Progress",
    "Reject",
    "RunCancelled",
    "SourceContext",
    "TerminalError",
    "TestCheck",
    "TestResult",
    "TransientError",
    "connector_kinds",
    "get_connector",
    "load_builtin_connectors",
    "register_connector",
    "unregister_connector",
]
