"""Command line: ``python -m app serve | migrate``.

Configuration errors end the process with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import msgspec

from app.core.settings import Settings, SettingsError, load_settings

Command = Callable[[Settings, argparse.Namespace], int]


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from app.core.serving import build_server
    from app.main import create_app

    server = build_server(
        create_app(settings), args.host or settings.host, args.port or settings.port
    )
    server.run()
    return 0 if server.started else 1


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from app.core.embedded_pg import start_embedded_postgres
    from app.core.migrations import upgrade_to_head

    # The schema owner's URL (PULSE_MIGRATION_DATABASE_URL), else the app's.
    url = settings.effective_migration_url
    server = None
    if url is None:
        if settings.env != "development":
            raise SettingsError([f"PULSE_DATABASE_URL is required when PULSE_ENV={settings.env}"])
        url, server = start_embedded_postgres(settings.data_path)
    try:
        upgrade_to_head(url)
    finally:
        if server is not None:
            server.cleanup()
    print("database is at the migration head", file=sys.stderr)
    return 0


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    """Development launcher: Pulse plus its world on loopback. Never in production."""
    if settings.env != "development":
        raise SettingsError([f"`dev` runs only with PULSE_ENV=development (got {settings.env})"])
    import uvloop

    from app.dev.launcher import run_dev

    if args.host or args.port:
        settings = msgspec.structs.replace(
            settings, host=args.host or settings.host, port=args.port or settings.port
        )
    return uvloop.run(run_dev(settings, scale=args.demo_scale))


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from app.dev.issuer.cli import token_command

    return token_command(settings, args)


COMMANDS: dict[str, Command] = {"serve": _serve, "migrate": _migrate, "dev": _dev, "token": _token}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Pulse analytics backend")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API server (uvicorn)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    sub.add_parser("migrate", help="upgrade the database to the newest migration")
    dev = sub.add_parser("dev", help="development: Pulse with embedded services and demo data")
    dev.add_argument("--host")
    dev.add_argument("--port", type=int)
    dev.add_argument(
        "--demo-scale", type=float, default=1.0, help="multiply the demo data volume (e.g. 0.2)"
    )
    token = sub.add_parser("token", help="development: mint an access token (prints only it)")
    token.add_argument("--tenant", action="append", help="tenant id (repeat for several)")
    token.add_argument("--role", choices=["viewer", "admin", "operator"], default="admin")
    token.add_argument("--subject", default="dev-user")
    token.add_argument("--ttl", type=int, default=8 * 3600, help="lifetime in seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        return COMMANDS[args.command](settings, args)
    except SettingsError as exc:
        print(f"pulse: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
