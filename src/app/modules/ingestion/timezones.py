"""Tenant timezones for ingestion: the app's one cached lookup, unknown names as UTC."""

from __future__ import annotations

from app.core.timezones import zone_or_utc as zone

__all__ = ["zone"]
