"""Pulse settings: one typed msgspec Struct read once from ``PULSE_*`` variables.

Values come from the process environment, then from an optional ``.env`` file
(the real environment wins). Every bad value is reported with its variable name
in a single :class:`SettingsError`, so start-up fails with one clear message per
problem instead of a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from litestar.datastructures import State

PREFIX = "PULSE_"

Environment = Literal["development", "test", "production"]
LogFormat = Literal["json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
SmtpSecurity = Literal["starttls", "tls", "none"]

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class SettingsError(Exception):
    """Raised with one line per invalid ``PULSE_*`` variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration: " + "; ".join(problems))


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Every knob Pulse has. Field ``foo_bar`` is read from ``PULSE_FOO_BAR``."""

    # --- process -----------------------------------------------------------
    env: Environment = "development"
    host: str = "127.0.0.1"
    port: Port = 8000
    log_level: LogLevel = "INFO"
    # Per-logger levels over the defaults (chatty libraries start at WARNING):
    # "asyncssh=INFO,app.watchdog=DEBUG".
    log_levels: str = ""
    # Unset means: json in production, console elsewhere.
    log_format: LogFormat | None = None
    data_dir: str = ".data"
    public_url: str | None = None
    # After SIGTERM: in-flight requests get 3 s, then running imports get this long to finish
    # before they are cancelled and re-queued; the two together stay under 10 s.
    shutdown_grace_s: PositiveFloat = 6.0

    # --- database ----------------------------------------------------------
    database_url: str | None = None
    # The schema owner's URL for migrations (the app's own role owns no table so that
    # row-level security applies to it); unset: PULSE_DATABASE_URL.
    migration_database_url: str | None = None
    db_pool_size: PositiveInt = 10
    db_max_overflow: NonNegativeInt = 10
    db_pool_timeout_s: PositiveFloat = 5.0
    db_connect_timeout_s: PositiveFloat = 5.0
    db_statement_timeout_ms: PositiveInt = 15_000
    # Bound of every database wait a request makes (connect, pool, statements), so a
    # database that stops answering gives 503 instead of a hang; imports do not use it.
    db_request_timeout_s: PositiveFloat = 10.0
    readiness_timeout_s: PositiveFloat = 2.0

    # --- outbound HTTP ----------------------------------------------------
    http_timeout_s: PositiveFloat = 10.0
    http_max_connections: PositiveInt = 100
    # Tenant-configured destinations (SFTP hosts, BigQuery endpoints) that may resolve to
    # loopback, private, link-local or metadata addresses: comma-separated CIDRs and host
    # names. Unset: none, except loopback in development.
    outbound_allow: str | None = None

    # --- event-loop watchdog ----------------------------------------------
    loop_lag_warn_ms: PositiveInt = 100
    loop_lag_interval_ms: PositiveInt = 50

    # --- auth (OIDC) ---------------------------------------------------------
    oidc_issuer: str | None = None
    oidc_audience: str = "pulse"
    oidc_algorithms: str = "RS256,ES256"
    # Roles per tenant (docs/auth.md): (c) a tenants claim + a roles claim ("" turns it off),
    oidc_tenant_claim: str | None = "tenant_id"
    oidc_roles_claim: str | None = "roles"
    # (a) a claim mapping tenant id -> roles, e.g. {"pulse_tenants": {"acme": ["admin"]}},
    oidc_tenant_roles_claim: str | None = None
    # (b) a list claim of strings holding tenant and role, e.g. "acme:admin", read with a
    # regex naming both (Keycloak group paths: "/tenants/(?P<tenant>[^/]+)/(?P<role>[^/]+)").
    oidc_tenant_groups_claim: str | None = None
    oidc_tenant_group_pattern: str = r"(?P<tenant>[^:/\s]+):(?P<role>[^:/\s]+)"
    # "idp-name=pulse-role,..." e.g. "pulse-admins=admin,pulse-viewers=viewer"
    oidc_role_map: str = ""
    # operator (platform-wide) only through these: a claim holding a value, or subjects.
    oidc_operator_claim: str | None = None
    oidc_operator_value: str | None = None
    oidc_operator_subjects: str | None = None
    # Verified access tokens remembered (by SHA-256) for at most 300 s; 0 turns it off.
    oidc_token_cache_size: NonNegativeInt = 10_000
    oidc_leeway_s: NonNegativeInt = 30
    oidc_strict_typ: bool = False
    oidc_jwks_cooldown_s: Annotated[float, msgspec.Meta(ge=30)] = 30.0
    oidc_jwks_max_stale_s: PositiveFloat = 86_400.0
    oidc_introspection_url: str | None = None
    oidc_introspection_client_id: str | None = None
    oidc_introspection_client_secret: str | None = None
    oidc_introspection_cache_s: PositiveFloat = 300.0
    oidc_web_client_id: str = "pulse-dashboard"

    # --- ingestion -----------------------------------------------------------
    secret_key: str | None = None
    ingest_concurrency: PositiveInt = 8
    bigquery_threads: PositiveInt = 12
    scheduler_interval_s: PositiveFloat = 30.0
    # A run's lease; a heartbeat renews it well before it expires (at most every 15 s).
    ingest_lease_s: PositiveFloat = 60.0
    ingest_heartbeat_s: Annotated[float, msgspec.Meta(gt=0, le=15)] = 5.0
    # How often an idle runner looks for queued runs and expired leases.
    ingest_poll_interval_s: PositiveFloat = 2.0
    ingest_max_attempts: PositiveInt = 5
    ingest_retry_base_s: PositiveFloat = 30.0
    ingest_retry_max_s: PositiveFloat = 900.0
    ingest_batch_rows: Annotated[int, msgspec.Meta(ge=1, le=50_000)] = 50_000
    ingest_quarantine_cap: NonNegativeInt = 1000
    ingest_test_timeout_s: PositiveFloat = 15.0
    # Worker processes parsing and validating imported rows (0: one per CPU core).
    ingest_workers: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0
    # A worker call (a chunk of a file, a synthetic day, a page) running longer is hung.
    ingest_worker_timeout_s: PositiveFloat = 300.0
    # Longest wait of a load for its turn behind other loads of the same tenant.
    ingest_load_lock_wait_s: PositiveFloat = 300.0
    # A run that loaded at least this many rows refreshes the planner's statistics.
    ingest_analyze_min_rows: PositiveInt = 10_000
    # PostgreSQL work_mem of an import's transaction (its rollup aggregates), in MiB.
    ingest_work_mem_mb: Annotated[int, msgspec.Meta(ge=4, le=4096)] = 64
    # How many imports of this process run their heavy statements (COPY, merge, rollups)
    # at once; the others wait their turn between statements (0: half the CPU cores).
    ingest_db_slots: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0

    # --- dashboard -----------------------------------------------------------
    # A token bucket per tenant (per process): refills at this rate, holds up to the burst.
    stats_rate_limit_per_minute: PositiveInt = 6000
    stats_rate_limit_burst: PositiveInt = 1000
    # While the change listener (PostgreSQL LISTEN) is down, cached tenant facts live this long.
    stats_facts_fallback_ttl_s: PositiveFloat = 2.0
    stats_cache_ttl_s: PositiveFloat = 300.0
    stats_cache_max_entries: PositiveInt = 10_000

    # --- email ---------------------------------------------------------------
    smtp_host: str | None = None
    smtp_port: Port = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_security: SmtpSecurity = "starttls"
    smtp_from: str = "Pulse <pulse@localhost>"
    smtp_timeout_s: PositiveFloat = 10.0
    # PEM bundle trusted for the SMTP server's certificate (a private CA); unset: system CAs.
    smtp_ca_file: str | None = None
    # Development catcher (PULSE_ENV=development, no smtp_host): its port, 0 = any free one.
    smtp_catcher_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    notify_poll_interval_s: PositiveFloat = 2.0
    notify_batch_size: PositiveInt = 50
    notify_max_attempts: PositiveInt = 20
    notify_retry_base_s: PositiveFloat = 10.0
    notify_retry_max_s: PositiveFloat = 1800.0

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def runs_dev_issuer(self) -> bool:
        """Development without a configured issuer runs its own (``app.dev.issuer``)."""
        return self.env == "development" and not self.oidc_issuer

    @property
    def effective_log_format(self) -> LogFormat:
        if self.log_format is not None:
            return self.log_format
        return "json" if self.is_production else "console"

    @property
    def effective_migration_url(self) -> str | None:
        return self.migration_database_url or self.database_url

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()


_FIELDS = msgspec.structs.fields(Settings)
_DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a minimal ``.env`` file: ``KEY=value`` lines, ``#`` comments, optional quotes."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _DOTENV_LINE.match(line)
        if match is None:
            continue
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _convert(raw: str, annotation: Any) -> Any:
    # Empty strings mean "unset" for optional values, so `PULSE_X=` in a .env is harmless.
    if raw == "":
        raw_value: Any = None
    elif raw.lower() in {"true", "false"}:
        raw_value = raw.lower() == "true"
    else:
        raw_value = raw
    try:
        return msgspec.convert(raw_value, annotation, strict=False)
    except msgspec.ValidationError:
        if raw_value is None:
            raise
        # Let Literal/str fields keep "true"/"false" spelled as given.
        return msgspec.convert(raw, annotation, strict=False)


LOGGER_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_log_levels(value: str) -> tuple[dict[str, str], list[str]]:
    """``"asyncssh=INFO, aiosmtpd=debug"`` as {logger: LEVEL}, and the problems found."""
    levels: dict[str, str] = {}
    problems: list[str] = []
    for pair in filter(None, (p.strip() for p in value.split(","))):
        name, _, level = pair.partition("=")
        name, level = name.strip(), level.strip().upper()
        if not name or level not in LOGGER_LEVELS:
            problems.append(
                f"PULSE_LOG_LEVELS: {pair!r} must look like logger=LEVEL"
                f" (LEVEL one of {', '.join(LOGGER_LEVELS)})"
            )
            continue
        levels[name] = level
    return levels, problems


def _check_semantics(settings: Settings) -> list[str]:
    problems: list[str] = []
    problems.extend(parse_log_levels(settings.log_levels)[1])
    if settings.is_production and not settings.database_url:
        problems.append("PULSE_DATABASE_URL is required when PULSE_ENV=production")
    if settings.is_production and not settings.secret_key:
        problems.append("PULSE_SECRET_KEY is required when PULSE_ENV=production")
    for variable, url in (
        ("PULSE_DATABASE_URL", settings.database_url),
        ("PULSE_MIGRATION_DATABASE_URL", settings.migration_database_url),
    ):
        if url and not url.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
            problems.append(
                f"{variable} must be a PostgreSQL URL (postgresql+asyncpg://user:pass@host/db)"
            )
    if settings.outbound_allow:
        from app.core.outbound import parse_allow_list

        try:
            parse_allow_list(settings.outbound_allow)
        except ValueError as exc:
            problems.append(f"PULSE_OUTBOUND_ALLOW: {exc}")
    for name in settings.oidc_algorithms.split(","):
        if name.strip() not in {
            "RS256",
            "RS384",
            "RS512",
            "ES256",
            "ES384",
            "ES512",
            "PS256",
            "PS384",
            "PS512",
            "EdDSA",
        }:
            problems.append(
                f"PULSE_OIDC_ALGORITHMS: {name.strip()!r} is not an allowed asymmetric algorithm"
            )
    for pair in filter(None, (p.strip() for p in settings.oidc_role_map.split(","))):
        idp_role, _, pulse_role = pair.partition("=")
        if pulse_role == "operator":
            problems.append(
                f"PULSE_OIDC_ROLE_MAP: {pair!r}: operator is not a tenant role; grant it with"
                " PULSE_OIDC_OPERATOR_CLAIM and _VALUE or PULSE_OIDC_OPERATOR_SUBJECTS"
            )
        elif not idp_role or pulse_role not in {"viewer", "admin"}:
            problems.append(f"PULSE_OIDC_ROLE_MAP: {pair!r} must look like idp-role=viewer|admin")
    problems.extend(_tenant_role_problems(settings))
    introspection = (
        settings.oidc_introspection_url,
        settings.oidc_introspection_client_id,
        settings.oidc_introspection_client_secret,
    )
    if any(introspection) and not all(introspection):
        problems.append(
            "PULSE_OIDC_INTROSPECTION_URL, _CLIENT_ID and _CLIENT_SECRET must be set together"
        )
    return problems


def _tenant_role_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    try:
        pattern = re.compile(settings.oidc_tenant_group_pattern)
    except re.error as exc:
        problems.append(f"PULSE_OIDC_TENANT_GROUP_PATTERN is not a valid regex: {exc}")
    else:
        if not {"tenant", "role"} <= set(pattern.groupindex):
            problems.append(
                "PULSE_OIDC_TENANT_GROUP_PATTERN must name two groups: (?P<tenant>...) and"
                " (?P<role>...)"
            )
    if bool(settings.oidc_operator_claim) != bool(settings.oidc_operator_value):
        problems.append("PULSE_OIDC_OPERATOR_CLAIM and PULSE_OIDC_OPERATOR_VALUE go together")
    if bool(settings.oidc_tenant_claim) != bool(settings.oidc_roles_claim):
        problems.append(
            "PULSE_OIDC_TENANT_CLAIM and PULSE_OIDC_ROLES_CLAIM are set or emptied together"
        )
    return problems


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")
) -> Settings:
    """Read, convert and validate all settings; raise SettingsError listing every problem."""
    source: dict[str, str] = read_dotenv(dotenv) if dotenv is not None else {}
    source.update(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    problems: list[str] = []
    known = {PREFIX + f.name.upper() for f in _FIELDS}
    for field in _FIELDS:
        variable = PREFIX + field.name.upper()
        if variable not in source:
            continue
        try:
            values[field.name] = _convert(source[variable], field.type)
        except msgspec.ValidationError as exc:
            problems.append(f"{variable}={source[variable]!r}: {_plain(exc)}")
    unknown = sorted(k for k in source if k.startswith(PREFIX) and k not in known)
    problems.extend(
        f"{name} is not a Pulse setting" for name in unknown if not name.startswith("PULSE_TEST_")
    )
    if problems:
        raise SettingsError(problems)
    settings = Settings(**values)
    problems = _check_semantics(settings)
    if problems:
        raise SettingsError(problems)
    return settings


def _plain(exc: msgspec.ValidationError) -> str:
    # msgspec says "Expected `int`, got `str`"; drop the `$` path, it is always the root here.
    return str(exc).replace(" - at `$`", "")


def provide_settings(state: State) -> Settings:
    """The app's settings as a dependency (``settings: NamedDependency[Settings]``)."""
    settings: Settings = state.settings
    return settings
