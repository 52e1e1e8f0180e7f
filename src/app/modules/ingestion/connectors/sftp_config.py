"""The ``sftp`` source's configuration and secrets, checked the way a run will use them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import msgspec

from app.core.validation import Text, described, iana_zone_names
from app.modules.events import CANONICAL_FIELDS

if TYPE_CHECKING:
    CanonicalField = str
else:
    # The event store's field names (written once there), as the Literal msgspec checks a
    # column mapping's targets against and the OpenAPI schema lists.
    CanonicalField = Literal[CANONICAL_FIELDS]
RemoteDir = Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=r"^[^\x00]+$")]
ColumnName = Annotated[Text, msgspec.Meta(min_length=1, max_length=200)]
Pattern = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^/\x00]+$")]


# Read once at import (start-up), never on the event loop.
_ZONE_NAMES = iana_zone_names()


HostName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=255,
        pattern=described(
            r"^(?:[A-Za-z0-9_.-]+|\[?[0-9A-Fa-f:.]+\]?)$",
            "must be a host name or an IP address (no scheme, port or path)",
        ),
        examples=["sftp.partner.example"],
    ),
]
# One character the CSV reader can split on (not a quote, line break or NUL).
Delimiter = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=1,
        pattern=described(
            r'^[^"\r\n\x00]$', "must be one character other than a quote or line break"
        ),
    ),
]


class SftpConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: HostName
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 22
    username: Annotated[Text, msgspec.Meta(min_length=1, max_length=255)]
    # Required: a known_hosts line or "SHA256:<base64>" (no trust on first use).
    host_key: Annotated[Text, msgspec.Meta(min_length=8, max_length=16_384)]
    remote_dir: RemoteDir = "."
    pattern: Pattern = "*.csv*"
    format: Literal["csv", "jsonl"] = "csv"
    compression: Literal["auto", "gzip", "none"] = "auto"
    csv_delimiter: Delimiter = ","
    csv_header: bool = True
    # Column names in file order when the CSV has no header row.
    columns: Annotated[list[ColumnName], msgspec.Meta(max_length=1000)] | None = None
    # Source column (or JSON key) -> canonical field; other unknown columns go to properties.
    column_mapping: Annotated[dict[ColumnName, CanonicalField], msgspec.Meta(max_length=1000)] = (
        msgspec.field(default_factory=dict)
    )
    # strptime format of occurred_at; default ISO 8601 or epoch seconds/ms/us.
    timestamp_format: Annotated[Text, msgspec.Meta(max_length=100)] | None = None
    # For naive timestamps; default the tenant's timezone.
    timezone: Annotated[Text, msgspec.Meta(max_length=64, examples=["Europe/Berlin"])] | None = None
    settle_s: Annotated[int, msgspec.Meta(ge=0, le=86_400)] = 60
    after_import: Literal["leave", "move", "delete"] = "leave"
    processed_dir: RemoteDir = "processed"
    max_files_per_run: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    batch_rows: Annotated[int, msgspec.Meta(ge=1, le=50_000)] = 5000
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 15.0
    login_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 15.0
    # No byte for this long from the server fails the attempt (transient).
    idle_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    keepalive_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 15.0
    block_size: Annotated[int, msgspec.Meta(ge=4096, le=262_144)] = 65_536
    max_requests: Annotated[int, msgspec.Meta(ge=1, le=64)] = 16

    def __post_init__(self) -> None:
        # Checked here, the way parsing will read it: ZoneInfo(timezone) for naive timestamps.
        if self.timezone is not None and self.timezone not in _ZONE_NAMES:
            raise ValueError(
                f"timezone {self.timezone!r} is not an IANA time zone (e.g. Europe/Berlin)"
            )


class SftpSecrets(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    password: str | None = None
    private_key: str | None = None  # OpenSSH/PEM text
    passphrase: str | None = None
