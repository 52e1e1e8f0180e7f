"""Auth overhead: request latency with token introspection against an IdP that takes
300 ms per call (warm cache), with local JWT validation (RS256 against the cached
JWKS), and with no auth.

The authenticated figures use the summary route with the response cache warm, so the
request itself is cheap and the auth path shows. Routes without auth are the public ones,
so "no auth" is ``GET /health/live`` (no database work either): a floor for the HTTP
stack rather than the same route without its guard, which Pulse cannot be configured to
serve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from bench.dashboard import check_paths, pulse_paths
from bench.database import MAIN_TENANT, Dataset
from bench.issuer import Issuer
from bench.load import summarise, wrk
from bench.profiles import Profile
from bench.servers import pulse


def run(dataset: Dataset, issuer: Issuer, profile: Profile, log: Callable[[str], None]) -> Any:
    jwt_token = issuer.token([MAIN_TENANT], role="viewer")
    opaque = issuer.opaque_token([MAIN_TENANT], role="viewer")
    paths = pulse_paths("summary", dataset)
    out: dict[str, Any] = {"idp_delay_ms": round(issuer.introspection_delay_s * 1000)}
    with pulse(dataset, issuer, name="pulse-auth") as server:
        check_paths(server, paths, {"Authorization": f"Bearer {jwt_token}"})
        calls_before = issuer.introspections
        check_paths(server, paths[:1], {"Authorization": f"Bearer {opaque}"})  # warm
        with httpx.Client(base_url=server.url, timeout=10) as client:
            if client.get("/health/live").status_code != 200:
                raise RuntimeError("/health/live did not answer 200")
        modes: dict[str, tuple[list[str], dict[str, str]]] = {
            "introspection": (paths, {"Authorization": f"Bearer {opaque}"}),
            "jwt": (paths, {"Authorization": f"Bearer {jwt_token}"}),
            "none": (["/health/live"], {}),
        }
        for connections in (10, max(profile.concurrency)):
            by_mode: dict[str, Any] = {}
            for mode, (mode_paths, headers) in modes.items():
                samples = [
                    wrk(
                        server.url,
                        mode_paths,
                        connections=connections,
                        seconds=profile.load_seconds,
                        headers=headers,
                    )
                    for _ in range(profile.load_runs)
                ]
                by_mode[mode] = summarise(samples)
                log(
                    f"  auth {mode} c={connections}: {by_mode[mode]['rps']:.0f} req/s"
                    f" p99={by_mode[mode]['p99']:.1f} ms errors={by_mode[mode]['errors']}"
                )
            out[str(connections)] = by_mode
        out["introspection_calls"] = issuer.introspections - calls_before
    return out
