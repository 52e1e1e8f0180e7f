"""HTTP load with ``wrk`` (Debian package) and the statistics every figure uses.

``wrk`` keeps ``connections`` requests in flight (a closed loop: a slow answer delays that
connection's next request, so throughput falls when latency rises). A Lua script rotates
through a list of paths, so concurrent requests are not all the same query, and prints
the latency percentiles as JSON when the run ends.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.database import DATA_ROOT

_SCRIPT = r"""
local paths = {%(paths)s}
local headers = {%(headers)s}
local counter = 0
local thread_index = 0
local threads = {}

function setup(thread)
   thread:set("offset", thread_index)
   thread_index = thread_index + 1
   table.insert(threads, thread)
end

function init(args)
   counter = offset * 7
end

function request()
   counter = counter + 1
   local path = paths[(counter %% #paths) + 1]
   return wrk.format("GET", path, headers)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '\nBENCH_JSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d,'
      .. ' "write": %%d, "status": %%d, "timeout": %%d, "p50": %%d, "p90": %%d, "p95": %%d,'
      .. ' "p99": %%d, "max": %%d, "mean": %%.1f}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(95),
      latency:percentile(99), latency.max, latency.mean))
end
"""


def lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Sample:
    """One measured run: throughput and latency in milliseconds."""

    rps: float
    p50: float
    p95: float
    p99: float
    max: float
    requests: int
    errors: int

    def as_dict(self) -> dict[str, float]:
        return {
            "rps": round(self.rps, 1),
            "p50": round(self.p50, 2),
            "p95": round(self.p95, 2),
            "p99": round(self.p99, 2),
            "max": round(self.max, 2),
            "requests": self.requests,
            "errors": self.errors,
        }


FIELDS = ("rps", "p50", "p95", "p99", "max")


def summarise(samples: Sequence[Sample]) -> dict[str, Any]:
    """Median of each field over the runs, with its spread (min..max) and the runs."""
    out: dict[str, Any] = {"runs": [s.as_dict() for s in samples]}
    for name in FIELDS:
        values = [getattr(s, name) for s in samples]
        out[name] = round(statistics.median(values), 2)
        out[name + "_spread"] = [round(min(values), 2), round(max(values), 2)]
    out["errors"] = sum(s.errors for s in samples)
    out["requests"] = sum(s.requests for s in samples)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def sample_from_latencies(latencies_s: Sequence[float], duration_s: float, errors: int) -> Sample:
    ms = [x * 1000 for x in latencies_s]
    return Sample(
        rps=len(ms) / duration_s,
        p50=percentile(ms, 50),
        p95=percentile(ms, 95),
        p99=percentile(ms, 99),
        max=max(ms) if ms else float("nan"),
        requests=len(ms),
        errors=errors,
    )


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError(
            "the benchmark needs wrk (Debian: apt-get install -y wrk); it is the load generator"
        )
    return path


def wrk(
    base_url: str,
    paths: Sequence[str],
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    threads: int = 2,
) -> Sample:
    """One wrk run; raises if wrk fails or reports nothing."""
    binary = require_wrk()
    script_dir = DATA_ROOT / "wrk"
    script_dir.mkdir(parents=True, exist_ok=True)
    script = script_dir / f"rotate-{abs(hash((tuple(paths), tuple((headers or {}).items()))))}.lua"
    header_lua = ", ".join(
        f"[{lua_string(k)}] = {lua_string(v)}" for k, v in (headers or {}).items()
    )
    script.write_text(
        _SCRIPT % {"paths": ", ".join(lua_string(p) for p in paths), "headers": header_lua}
    )
    argv = [
        binary,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        base_url,
    ]
    done = subprocess.run(  # noqa: S603 - argv built here
        argv, capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-800:]} {done.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    duration_s = data["duration_us"] / 1e6
    if data["requests"] == 0:
        # Nothing answered within the run: every latency was at least the run's length.
        floor = duration_s * 1000
        return Sample(rps=0.0, p50=floor, p95=floor, p99=floor, max=floor, requests=0, errors=0)
    return Sample(
        rps=(data["requests"] - data["status"]) / duration_s,
        p50=data["p50"] / 1000,
        p95=data["p95"] / 1000,
        p99=data["p99"] / 1000,
        max=data["max"] / 1000,
        requests=data["requests"],
        errors=errors,
    )


def repeat(runs: int, measure: Callable[[], Sample]) -> dict[str, Any]:
    return summarise([measure() for _ in range(runs)])


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
