"""Pulse's modules. Each exports a :class:`Module` describing what it adds to the app."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from app.core.lifespan import LifespanHook

# Order matters only for lifespan hooks: later modules start after earlier ones
# and stop before them.
INSTALLED: tuple[str, ...] = (
    "auth",
    "tenants",
    "events",
    "notifications",
    "ingestion",
    "dashboard",
    "web",
)


@dataclass(frozen=True)
class Module:
    name: str
    route_handlers: list[Any] = field(default_factory=list)
    dependencies: dict[str, Any] = field(default_factory=dict)
    guards: list[Any] = field(default_factory=list)
    lifespan: list[LifespanHook] = field(default_factory=list)


def installed() -> list[Module]:
    return [importlib.import_module(f"app.modules.{name}").module for name in INSTALLED]
