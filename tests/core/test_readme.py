"""The README's promises stay true: every setting is documented with its real default,
every route is in the API table."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import ModuleType

README = Path(__file__).resolve().parents[2] / "README.md"


def _tables() -> ModuleType:
    """scripts/readme_tables.py, which writes both tables (it is not a package)."""
    sys.path.insert(0, str(README.parent / "scripts"))
    import readme_tables

    return readme_tables


def _documented() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- settings-table:start -->")[1].split("<!-- settings-table:end -->")[0]
    rows = re.findall(r"^\| `(PULSE_[A-Z0-9_]+)` \| ([^|]+) \|", table, flags=re.M)
    return {name: default.strip() for name, default in rows}


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    assert _documented() == _tables().settings_defaults(), "run scripts/readme_tables.py"


def test_readme_api_table_lists_every_route() -> None:
    readme_tables = _tables()
    documented = readme_tables.section(README.read_text(encoding="utf-8"), "api-table")
    assert documented == readme_tables.api_table(), "run scripts/readme_tables.py"


def test_readme_opens_with_the_two_commands() -> None:
    head = README.read_text(encoding="utf-8")[:400]
    assert "make run" in head
    assert "make test" in head
