"""``python -m bench --profile quick|full``: every benchmark of issue 8 in one run.

Starts its own PostgreSQL (cached data set), a loopback OIDC issuer and the processes
under test, runs each phase, writes the raw results to ``bench/results/<profile>.json``
and the report to ``docs/benchmarks.md``. A phase that fails is recorded as an error in
both (and the exit code is 1); the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bench import dashboard, environment, report
from bench.database import DATA_ROOT, MAIN_TENANT, ROOT, SMALL_TENANT, Dataset, prepare
from bench.issuer import Issuer
from bench.load import write_json
from bench.profiles import PROFILES, Profile
from bench.servers import blocked_summary, peer, pulse

PHASES = ("dashboard", "year", "ceiling", "peer", "ingestion", "bigquery", "isolation", "auth")
started_at = time.monotonic()


def log(message: str) -> None:
    elapsed = time.monotonic() - started_at
    print(f"[{elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)


def _phase(results: dict[str, Any], name: str, run: Callable[[], Any]) -> None:
    log(f"phase {name}")
    begun = time.monotonic()
    try:
        results[name] = run()
    except Exception as exc:
        log(f"phase {name} FAILED: {exc!r}")
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
    results.setdefault("phase_seconds", {})[name] = round(time.monotonic() - begun, 1)


def run_dashboard_phase(dataset: Dataset, issuer: Issuer, profile: Profile) -> dict[str, Any]:
    token = issuer.token([MAIN_TENANT, SMALL_TENANT], role="viewer")
    out: dict[str, Any] = {}
    with pulse(dataset, issuer, name="pulse-cache-off", PULSE_STATS_CACHE_TTL_S="0.000001") as s:
        out["cache_off"] = dashboard.run_pulse(s, token, dataset, profile, log)
        out["cache_off"]["rss_bytes"] = s.memory()
    out["cache_off"]["loop_blocked"] = blocked_summary(s.log_path)
    with pulse(dataset, issuer, name="pulse-cache-on") as s:
        out["cache_on"] = dashboard.run_pulse(s, token, dataset, profile, log)
        out["cache_on"]["rss_bytes"] = s.memory()
    out["cache_on"]["loop_blocked"] = blocked_summary(s.log_path)
    out["statements"] = dashboard.guarded(
        lambda: dashboard.count_statements(dataset, issuer, token, log), log
    )
    return out


def run_year_phase(dataset: Dataset, issuer: Issuer, profile: Profile) -> dict[str, Any]:
    """The 365-day summary of the main tenant, uncached (the full profile's 10M events;
    `--profile full --only year` measures it without the rest of the full run)."""
    if profile.name != "full":
        return {"skipped": "the 365-day summary target is for the full profile's 10M events"}
    token = issuer.token([MAIN_TENANT, SMALL_TENANT], role="viewer")
    with pulse(dataset, issuer, name="pulse-year", PULSE_STATS_CACHE_TTL_S="0.000001") as s:
        summary = dashboard.run_year_summary(s, token, dataset, profile, log)
    main = dataset.meta.get("tenants", {}).get(MAIN_TENANT, {})
    return {"summary": summary, "events": main.get("events"), "days": profile.days}


def run_peer_phase(dataset: Dataset, profile: Profile) -> dict[str, Any]:
    with peer(dataset) as server:
        return {"summary": dashboard.run_peer(server, dataset, profile, log)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--only", help="comma-separated phases: " + ",".join(PHASES))
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached data set")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument(
        "--build-only", action="store_true", help="build (or check) the cached data set and stop"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite docs/benchmarks.md from bench/results/<profile>.json without measuring",
    )
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    phases = args.only.split(",") if args.only else list(PHASES)
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")

    if args.report_only:
        path = ROOT / "bench" / "results" / f"{profile.name}.json"
        results = json.loads(path.read_text())
        dash = results.get("dashboard")
        if isinstance(dash, dict) and "error" not in dash:
            # Results saved before the loop-blocked summary existed: the logs of that run
            # are still under bench/.data/logs/ (each run overwrites them).
            for mode in ("cache_off", "cache_on"):
                if "loop_blocked" not in dash[mode]:
                    log_path = DATA_ROOT / "logs" / f"pulse-{mode.replace('_', '-')}.log"
                    dash[mode]["loop_blocked"] = blocked_summary(log_path)
        iso = results.get("isolation")
        if isinstance(iso, dict) and "error" not in iso and "loop_blocked" not in iso:
            iso["loop_blocked"] = blocked_summary(DATA_ROOT / "logs" / "pulse-isolation.log")
        write_json(path, results)
        log(f"report: {report.write(results).relative_to(ROOT)}")
        return 0

    from app.core.logging import configure_logging
    from app.core.settings import Settings

    configure_logging(Settings(env="test", log_level="WARNING"))
    log(f"profile {profile.name}; phases {', '.join(phases)}; data under {DATA_ROOT}")
    dataset = prepare(profile, log, rebuild=args.rebuild)
    if args.build_only:
        log(f"data set ready: {dataset.meta}")
        dataset.server.cleanup()
        return 0
    results: dict[str, Any] = {
        "profile": profile.describe(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment.describe(dataset),
        "dataset": {k: v for k, v in dataset.meta.items() if k != "version"},
        "phases": phases,
    }
    issuer = Issuer(introspection_delay_s=0.3)
    try:
        from bench import auth, bigquery, ingestion, isolation

        runners: dict[str, Callable[[], Any]] = {
            "dashboard": lambda: run_dashboard_phase(dataset, issuer, profile),
            "year": lambda: run_year_phase(dataset, issuer, profile),
            "ceiling": lambda: asyncio.run(dashboard.run_ceiling(dataset, profile, log)),
            "peer": lambda: run_peer_phase(dataset, profile),
            "ingestion": lambda: ingestion.run(dataset, issuer, profile, log),
            "bigquery": lambda: bigquery.run(profile, log),
            "isolation": lambda: isolation.run(dataset, issuer, profile, log),
            "auth": lambda: auth.run(dataset, issuer, profile, log),
        }
        for name in phases:
            _phase(results, name, runners[name])
    finally:
        issuer.close()
        dataset.server.cleanup()
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["total_seconds"] = round(time.monotonic() - started_at, 1)
    out = ROOT / "bench" / "results" / f"{profile.name}.json"
    if args.only and out.exists():
        # Some phases re-run: keep the other phases of the saved run, say which were redone.
        saved = json.loads(out.read_text())
        rerun = saved.setdefault("rerun", [])
        rerun.append(
            {
                "phases": phases,
                "started_at": results["started_at"],
                "environment": results["environment"],
                "total_seconds": results["total_seconds"],
            }
        )
        for name in phases:
            saved[name] = results[name]
            saved.setdefault("phase_seconds", {})[name] = results["phase_seconds"][name]
        results = saved
    write_json(out, results)
    log(f"raw results: {out.relative_to(ROOT)}")
    if not args.no_docs:
        path = report.write(results)
        log(f"report: {path.relative_to(ROOT)}")
    failed = [
        name for name in phases if isinstance(results.get(name), dict) and "error" in results[name]
    ]
    if failed:
        log(f"failed phases: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
