"""The README's promises stay true: every setting is documented with its real default."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from app.core.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _documented() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- settings-table:start -->")[1].split("<!-- settings-table:end -->")[0]
    rows = re.findall(r"^\| `(PULSE_[A-Z0-9_]+)` \| ([^|]+) \|", table, flags=re.M)
    return {name: default.strip() for name, default in rows}


def _shown(default: object) -> str:
    if default is None:
        return "(unset)"
    if default == "":
        return "(empty)"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    return f"`{default}`"


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    documented = _documented()
    actual = {
        f"PULSE_{field.name.upper()}": _shown(field.default)
        for field in msgspec.structs.fields(Settings)
    }
    assert documented == actual


def test_readme_api_table_lists_every_route() -> None:
    import sys

    sys.path.insert(0, str(README.parent / "scripts"))
    import readme_tables

    documented = readme_tables.section(README.read_text(encoding="utf-8"), "api-table")
    assert documented == readme_tables.api_table(), "run scripts/readme_tables.py"


def test_readme_opens_with_the_two_commands() -> None:
    head = README.read_text(encoding="utf-8")[:400]
    assert "make run" in head
    assert "make test" in head
