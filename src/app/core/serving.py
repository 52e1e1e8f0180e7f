"""The uvicorn server Pulse runs in, configured once for `serve` and `dev`."""

from __future__ import annotations

from types import FrameType

import uvicorn
from litestar import Litestar

# In-flight requests get this long after SIGTERM; background work has its own grace
# (PULSE_SHUTDOWN_GRACE_S) so that the whole shutdown stays under 10 s.
HTTP_DRAIN_S = 3


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which kills the
    process before atexit handlers flush the log queue. A handled signal is a clean
    exit for Pulse: forget it once recorded."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def build_server(app: Litestar, host: str, port: int, *, loop: str = "uvloop") -> GracefulServer:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=loop,
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=HTTP_DRAIN_S,
    )
    return GracefulServer(config)
