"""The ``synthetic`` source: deterministic GA4-like traffic for demos, tests and benchmarks.

The same (seed, day, volume) always yields the same events with the same ids, so
re-running a window changes no counts. Each day has ``sessions_per_day`` sessions,
about 45% of them from users new that day (``first_visit``, once per user) and the
rest from users who came on an earlier day. A session is a ``session_start``, one
``page_view`` (about half of all sessions, most of them bounces: a few seconds, not
engaged) or two to seven, some ``scroll``s, a ``user_engagement`` and, for a few, a
``purchase`` with revenue. A user keeps one country and one device; traffic sources
follow fixed weights per session. Events later than "now" are not produced (like a
live property).

Reuse from elsewhere (the benchmark): :func:`iter_day_events` / :func:`iter_events`.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar

import msgspec

from app.core.validation import INT_MAX
from app.modules.events.schema import event_id_for
from app.modules.ingestion.connectors import register_connector
from app.modules.ingestion.connectors.base import (
    Batch,
    DateWindow,
    ExtractContext,
    SourceContext,
    TerminalError,
    TestCheck,
    TestResult,
)
from app.modules.ingestion.prepare import Prepared, prepare_rows


class SyntheticConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    seed: Annotated[int, msgspec.Meta(ge=0, le=INT_MAX)] = 1
    sessions_per_day: Annotated[int, msgspec.Meta(ge=0, le=2_000_000)] = 200
    # A run with no window covers the last ``days_back`` days, today included.
    days_back: Annotated[int, msgspec.Meta(ge=1, le=400)] = 1
    batch_rows: Annotated[int, msgspec.Meta(ge=1, le=50_000)] = 5_000
    # Slows the source down (demos, tests of cancellation and crash recovery).
    batch_delay_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 0
    # Every Nth row is malformed on purpose (demonstrates quarantine); 0 = never.
    bad_row_every: Annotated[int, msgspec.Meta(ge=0, le=INT_MAX)] = 0


class SyntheticSecrets(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Not needed by the generator; lets demos and tests exercise secret handling.
    token: str | None = None


_COUNTRIES = (
    ("United States", "New York", 30),
    ("United Kingdom", "London", 12),
    ("Germany", "Berlin", 10),
    ("France", "Paris", 9),
    ("India", "Bengaluru", 9),
    ("Brazil", "Sao Paulo", 7),
    ("Japan", "Tokyo", 6),
    ("Canada", "Toronto", 6),
    ("Australia", "Sydney", 5),
    ("Spain", "Madrid", 6),
)
_DEVICES = (
    ("desktop", "Windows", "Chrome", 35),
    ("desktop", "Macintosh", "Safari", 12),
    ("mobile", "iOS", "Safari", 25),
    ("mobile", "Android", "Chrome", 22),
    ("tablet", "iOS", "Safari", 6),
)
_TRAFFIC = (
    ("google", "organic", None, 40),
    ("(direct)", "(none)", None, 25),
    ("newsletter", "email", "weekly", 10),
    ("facebook", "cpc", "spring_sale", 10),
    ("twitter", "social", None, 8),
    ("bing", "organic", None, 7),
)
_PAGES = (
    ("/", "Home"),
    ("/pricing", "Pricing"),
    ("/blog/launch", "We launched"),
    ("/blog/async-python", "Async Python at scale"),
    ("/docs", "Documentation"),
    ("/docs/ingestion", "Ingestion"),
    ("/products/widget", "Widget"),
    ("/products/gadget", "Gadget"),
    ("/cart", "Cart"),
    ("/checkout", "Checkout"),
)
_PAGE_WEIGHTS = (20, 10, 8, 6, 9, 5, 12, 10, 6, 4)


# A day's sessions: this share comes from users seen for the first time that day (one
# session each, with ``first_visit``); the rest from users who first came up to
# ``_RETURN_DAYS`` days earlier, recent ones more often.
_NEW_SHARE = 0.45
_RETURN_DAYS = 56
_RETURN_WEIGHTS = tuple(1.0 / back for back in range(1, _RETURN_DAYS + 1))
_RETURN_BACKS = tuple(range(1, _RETURN_DAYS + 1))
# Share of sessions that see one page; most of them leave within seconds (bounces).
_SINGLE_PAGE_SHARE = 0.55
_SINGLE_PAGE_ENGAGED = 0.15
_PURCHASE_SHARE_OF_ENGAGED = 0.06


def _pick(rng: random.Random, options: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    return rng.choices(options, weights=[o[-1] for o in options])[0]


def _cumulative(options: tuple[tuple[Any, ...], ...]) -> tuple[list[float], float]:
    weights = list(itertools.accumulate(o[-1] for o in options))
    return weights, weights[-1]


_COUNTRY_CUM = _cumulative(_COUNTRIES)
_DEVICE_CUM = _cumulative(_DEVICES)


def _fixed_pick(
    key: int, options: tuple[tuple[Any, ...], ...], cum: tuple[list[float], float]
) -> tuple[Any, ...]:
    """A weighted choice that depends only on ``key`` (a user's lasting traits)."""
    weights, total = cum
    return options[bisect.bisect_right(weights, (key % 10_007) / 10_007 * total)]


def _user_traits(seed: int, user: str) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """A user's country and device: the same in every session, on every day."""
    key = zlib.crc32(f"{seed}:{user}".encode())
    return _fixed_pick(key, _COUNTRIES, _COUNTRY_CUM), _fixed_pick(
        key // 10_007, _DEVICES, _DEVICE_CUM
    )


def _new_users(sessions: int) -> int:
    return max(1, round(sessions * _NEW_SHARE)) if sessions else 0


def _user_of(seed: int, first_day: date, index: int) -> str:
    return f"u{seed}-{first_day.strftime('%Y%m%d')}-{index}"


def iter_day_events(
    seed: int, day: date, sessions: int, *, bad_row_every: int = 0
) -> Iterator[dict[str, Any]]:
    """Every event of ``day`` (UTC) for ``seed`` as canonical rows, session by session.

    Users are stable across days: a user has one country and one device, gets
    ``first_visit`` once (on the day they first come) and returns on later days.
    """
    rng = random.Random(f"pulse-synthetic:{seed}:{day.isoformat()}")
    day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    new_users = _new_users(sessions)
    counter = itertools.count(1)
    for number in range(sessions):
        is_new = number < new_users
        if is_new:
            user = _user_of(seed, day, number)
        else:
            back = rng.choices(_RETURN_BACKS, weights=_RETURN_WEIGHTS)[0]
            user = _user_of(seed, day - timedelta(days=back), rng.randrange(new_users))
        session_id = f"{user}.{day.strftime('%Y%m%d')}{number}"
        (country, city, _), (device, os_name, browser, _) = _user_traits(seed, user)
        source, medium, campaign, _ = _pick(rng, _TRAFFIC)
        when = day_start + timedelta(seconds=rng.uniform(0, 86_300))
        if rng.random() < _SINGLE_PAGE_SHARE:
            pages = rng.choices(_PAGES, weights=_PAGE_WEIGHTS, k=1)
            engaged = rng.random() < _SINGLE_PAGE_ENGAGED
            engagement_ms = rng.randint(10_000, 90_000) if engaged else rng.randint(200, 8_000)
        else:
            pages = rng.choices(_PAGES, weights=_PAGE_WEIGHTS, k=rng.randint(2, 7))
            engaged = True
            engagement_ms = int(min(1_200_000, rng.lognormvariate(11.0, 0.8)))  # ~1 min median
        common = {
            "user_id": user,
            "session_id": session_id,
            "source": source,
            "medium": medium,
            "campaign": campaign,
            "country": country,
            "city": city,
            "device_category": device,
            "os": os_name,
            "browser": browser,
            "session_engaged": engaged,
        }

        def event(
            name: str,
            at: datetime,
            number: int = number,
            common: dict[str, Any] = common,
            **extra: Any,
        ) -> dict[str, Any]:
            index = next(counter)
            row = {
                "event_id": event_id_for("synthetic", seed, day.isoformat(), number, index),
                "event_name": name,
                "occurred_at": at,
                **common,
                **extra,
            }
            if bad_row_every and index % bad_row_every == 0:
                row["occurred_at"] = "not-a-timestamp"
            return row

        yield event("session_start", when, page_path=pages[0][0], page_title=pages[0][1])
        if is_new:
            yield event("first_visit", when, page_path=pages[0][0], page_title=pages[0][1])
        referrer: str | None = None if source == "(direct)" else f"https://{source}.example/"
        dwell_each = max(1, engagement_ms // len(pages))
        for path, title in pages:
            yield event("page_view", when, page_path=path, page_title=title, referrer=referrer)
            referrer = f"https://shop.example{path}"
            dwell = rng.randint(dwell_each // 2 + 1, dwell_each * 3 // 2 + 1)
            if engaged and rng.random() < 0.5:
                yield event(
                    "scroll",
                    when + timedelta(milliseconds=dwell // 2),
                    page_path=path,
                    page_title=title,
                    properties={"percent_scrolled": 90},
                )
            when += timedelta(milliseconds=dwell)
        yield event(
            "user_engagement",
            when,
            page_path=pages[-1][0],
            page_title=pages[-1][1],
            engagement_time_msec=engagement_ms,
        )
        if engaged and len(pages) > 1 and rng.random() < _PURCHASE_SHARE_OF_ENGAGED:
            revenue = Decimal(rng.randint(500, 30_000)) / 100
            yield event(
                "purchase",
                when + timedelta(seconds=5),
                page_path="/checkout",
                page_title="Checkout",
                revenue=revenue,
                currency="USD",
                properties={"transaction_id": f"T{seed}-{day.isoformat()}-{number}"},
            )


def iter_events(
    seed: int, window: DateWindow, sessions_per_day: int, *, until: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """All events of ``window``, day after day, skipping any later than ``until``."""
    for day in window.days():
        for row in iter_day_events(seed, day, sessions_per_day):
            if until is None or row["occurred_at"] <= until:
                yield row


def _take(rows: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return list(itertools.islice(rows, n))


def prepare_day(
    tenant_id: str,
    source_id: str,
    seed: int,
    day: date,
    sessions: int,
    bad_row_every: int,
    until: datetime,
    size: int,
) -> list[Prepared]:
    """Worker process: one day's events (up to ``until``), validated into COPY-ready
    pieces of at most ``size`` rows. A day is generated in one call: its events come
    from one random sequence, so it cannot be cut at an arbitrary session."""
    rows = (
        r
        for r in iter_day_events(seed, day, sessions, bad_row_every=bad_row_every)
        if not isinstance(r["occurred_at"], datetime) or r["occurred_at"] <= until
    )
    pieces = []
    line = 1
    while batch := _take(rows, size):
        pieces.append(prepare_rows(tenant_id, source_id, batch, None, line))
        line += len(batch)
    return pieces


class SyntheticConnector:
    kind: ClassVar[str] = "synthetic"
    config_type: ClassVar[type[msgspec.Struct]] = SyntheticConfig
    secrets_type: ClassVar[type[msgspec.Struct]] = SyntheticSecrets

    def default_window(self, config: Any, today: date) -> DateWindow | None:
        assert isinstance(config, SyntheticConfig)
        return DateWindow(today - timedelta(days=config.days_back - 1), today)

    async def test(self, ctx: SourceContext) -> TestResult:
        return TestResult(ok=True, checks=[TestCheck("generator", True, "always reachable")])

    async def extract(self, ctx: ExtractContext) -> AsyncIterator[Batch]:
        config: SyntheticConfig = ctx.config
        window = ctx.window or self.default_window(config, datetime.now(UTC).date())
        assert window is not None
        now = datetime.now(UTC)
        size = min(config.batch_rows, ctx.batch_rows)
        workers = ctx.workers
        if workers is None:
            raise TerminalError("synthetic imports need the worker pool")
        for day in window.days():
            item = day.isoformat()
            ctx.progress.report(stage="extracting", item=item)
            # Generated and validated in a worker process (pure Python: on the loop it
            # would delay every request); the loop only passes the pieces on.
            pieces = await workers.run(
                prepare_day,
                ctx.tenant_id,
                str(ctx.source_id),
                config.seed,
                day,
                config.sessions_per_day,
                config.bad_row_every,
                now,
                size,
            )
            for piece in pieces:
                if config.batch_delay_ms:
                    await asyncio.sleep(config.batch_delay_ms / 1000)
                yield Batch(rows=[], prepared=piece, item=item)
            yield Batch(rows=[], item=item, cursor={"last_completed_day": item})


register_connector(SyntheticConnector())
