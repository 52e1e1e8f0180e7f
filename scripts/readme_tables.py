"""Regenerate the README's API and configuration tables from the code.

    .venv/bin/python scripts/readme_tables.py

tests/core/test_readme.py fails when the README and the code disagree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
README = ROOT / "README.md"


def api_rows() -> list[tuple[str, str, str, str]]:
    """(method, path, who, summary) for every documented route, in path order."""
    from litestar.routes import HTTPRoute

    from app.core.settings import Settings
    from app.main import create_app

    # Development: the table also lists the development issuer's routes (app.dev), which
    # exist only there. Nothing connects: the app is built, not started.
    app = create_app(Settings(env="development", database_url="postgresql://unused/unused"))
    rows = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.include_in_schema or not handler.operation_id:
                continue
            opt: dict[str, Any] = handler.opt
            who = "public" if opt.get("public") else str(opt.get("role") or "any signed-in user")
            for method in sorted(handler.http_methods):
                if method in {"HEAD", "OPTIONS"}:
                    continue
                path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
                rows.append((method, path, who, str(handler.summary or "")))
    return sorted(rows, key=lambda r: (r[1], r[0]))


def api_table() -> str:
    lines = ["| method | path | who | what |", "| --- | --- | --- | --- |"]
    lines += [f"| {m} | `{p}` | {w} | {s} |" for m, p, w, s in api_rows()]
    return "\n".join(lines)


def settings_defaults() -> dict[str, str]:
    from app.core.settings import Settings

    def shown(default: object) -> str:
        if default is None:
            return "(unset)"
        if default == "":
            return "(empty)"
        if isinstance(default, bool):
            return f"`{str(default).lower()}`"
        return f"`{default}`"

    return {f"PULSE_{f.name.upper()}": shown(f.default) for f in msgspec.structs.fields(Settings)}


def section(text: str, name: str) -> str:
    return text.split(f"<!-- {name}:start -->\n")[1].split(f"<!-- {name}:end -->")[0].rstrip("\n")


def replace_section(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main() -> None:
    text = README.read_text(encoding="utf-8")
    text = replace_section(text, "api-table", api_table())
    README.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
