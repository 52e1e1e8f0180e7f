"""The dashboard's static files, read into memory once at start-up.

A handful of small files: holding them in memory means serving one never touches the
disk on the event loop (Litestar's static-file handler stats files on the loop), and
each gets a strong ETag for cheap revalidation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def read_assets(directory: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every servable file of ``directory`` (flat) by name. Blocking: call off the loop."""
    assets: dict[str, Asset] = {}
    for path in sorted(directory.iterdir()):
        media_type = MEDIA_TYPES.get(path.suffix)
        if media_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[path.name] = Asset(body=body, media_type=media_type, etag=etag)
    return assets
