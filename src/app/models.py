"""Imports every module's tables so that ``Base.metadata`` (and Alembic) sees them all."""

from __future__ import annotations

import importlib

MODEL_MODULES: tuple[str, ...] = (
    "app.modules.tenants.models",
    "app.modules.notifications.models",
    "app.modules.events.models",
    "app.modules.ingestion.models",
)


def import_all_models() -> None:
    for name in MODEL_MODULES:
        importlib.import_module(name)
