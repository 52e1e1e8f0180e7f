"""The event store's tables: one row per event, a data version per tenant, and the
rollups kept from the events (``stats_rollups``, their build state, session facts).

The schema itself is built by migration 0002; these mappings keep every table in
the one metadata (Alembic comparisons, test truncation) and give typed columns.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    Numeric,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_tenant_occurred", "tenant_id", "occurred_at"),
        Index("ix_events_tenant_name_occurred", "tenant_id", "event_name", "occurred_at"),
    )

    tenant_id: Mapped[str] = mapped_column(
        Text, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    event_name: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    user_id: Mapped[str | None] = mapped_column(Text)
    session_id: Mapped[str | None] = mapped_column(Text)
    page_path: Mapped[str | None] = mapped_column(Text)
    page_title: Mapped[str | None] = mapped_column(Text)
    referrer: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(Text)
    medium: Mapped[str | None] = mapped_column(Text)
    campaign: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(Text)
    city: Mapped[str | None] = mapped_column(Text)
    device_category: Mapped[str | None] = mapped_column(Text)
    os: Mapped[str | None] = mapped_column(Text)
    browser: Mapped[str | None] = mapped_column(Text)
    engagement_time_msec: Mapped[int | None] = mapped_column(BigInteger)
    session_engaged: Mapped[bool | None] = mapped_column(Boolean)
    revenue: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    currency: Mapped[str | None] = mapped_column(Text)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    source_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TenantDataVersion(Base):
    """Bumped by every load that changes a tenant's events: the dashboard's cache key."""

    __tablename__ = "tenant_data_versions"

    tenant_id: Mapped[str] = mapped_column(
        Text, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    fresh_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class StatsRollup(Base):
    __tablename__ = "stats_rollups"

    tenant_id: Mapped[str] = mapped_column(
        Text, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    grain: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    dim: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    bucket: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    value: Mapped[str] = mapped_column(Text, primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)
    pageviews: Mapped[int] = mapped_column(BigInteger)
    new_users: Mapped[int] = mapped_column(BigInteger)
    conversions: Mapped[int] = mapped_column(BigInteger)
    engagement_msec: Mapped[int] = mapped_column(BigInteger)
    revenue: Mapped[Decimal] = mapped_column(Numeric(24, 6))
    users_count: Mapped[int] = mapped_column(BigInteger)
    sessions_count: Mapped[int] = mapped_column(BigInteger)
    users_hll: Mapped[bytes | None] = mapped_column(LargeBinary)
    sessions_hll: Mapped[bytes | None] = mapped_column(LargeBinary)
    engaged_hll: Mapped[bytes | None] = mapped_column(LargeBinary)
    converting_hll: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Week and month rows: how many day rows they merge (hour and day rows: NULL).
    day_rows: Mapped[int | None] = mapped_column(SmallInteger)


class StatsRollupState(Base):
    """The timezone and conversion events a tenant's rollups were built with."""

    __tablename__ = "stats_rollup_state"

    tenant_id: Mapped[str] = mapped_column(
        Text, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    timezone: Mapped[str] = mapped_column(Text)
    conversion_events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    built_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sessions_built: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class StatsSession(Base):
    """A session's additive facts, which decide whether it is engaged (``increments``)."""

    __tablename__ = "stats_sessions"

    tenant_id: Mapped[str] = mapped_column(
        Text, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    session_id: Mapped[str] = mapped_column(Text, primary_key=True)
    flagged: Mapped[bool] = mapped_column(Boolean)
    engagement_msec: Mapped[int] = mapped_column(BigInteger)
    pageviews: Mapped[int] = mapped_column(BigInteger)
    converted: Mapped[bool] = mapped_column(Boolean)
    engaged: Mapped[bool] = mapped_column(Boolean)


# stats_rollups' columns in table order (COPY of rollup rows).
ROLLUP_COLUMNS = (
    "tenant_id",
    "grain",
    "dim",
    "bucket",
    "value",
    "events",
    "pageviews",
    "new_users",
    "conversions",
    "engagement_msec",
    "revenue",
    "users_count",
    "sessions_count",
    "users_hll",
    "sessions_hll",
    "engaged_hll",
    "converting_hll",
)
