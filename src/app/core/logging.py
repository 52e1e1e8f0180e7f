"""Structured logging: JSON in production, readable console lines in development.

Context (request id, tenant id, job id) is bound with ``structlog.contextvars``
and appears on every line logged inside that context, including library logs
routed through the standard ``logging`` module (uvicorn, sqlalchemy).
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys

import structlog

from app.core.settings import Settings, parse_log_levels

# Libraries that narrate their protocol at INFO (every SSH channel, every SMTP command):
# WARNING unless PULSE_LOG_LEVELS says otherwise, so Pulse's own lines stay readable.
QUIET_LIBRARIES = (
    "asyncssh",
    "aiosmtpd",
    "mail.log",  # aiosmtpd's protocol logger
    "aiosmtplib",
    "google",
    "urllib3",
    "httpx",
    "httpcore",
    "pgserver",
    "sqlalchemy.engine",
    "uvicorn.access",
    "bqemulator",
)

_SHARED_PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


class _DeferredQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the listener thread untouched: rendering (tracebacks read source
    files) and writing to stderr happen there, never on the event loop."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_listener: logging.handlers.QueueListener | None = None


_queue_handler: _DeferredQueueHandler | None = None


def _start_listener(handler: logging.Handler) -> logging.Handler:
    """One listener thread per process; reconfiguring swaps its handler without a join."""
    global _listener, _queue_handler
    if _listener is not None and _queue_handler is not None:
        _listener.handlers = (handler,)
        return _queue_handler
    log_queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(log_queue, handler, respect_handler_level=True)
    _listener.start()
    _queue_handler = _DeferredQueueHandler(log_queue)
    return _queue_handler


@atexit.register
def _flush_logs() -> None:
    if _listener is not None:
        _listener.stop()


def configure_logging(settings: Settings) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    renderer: structlog.types.Processor
    if settings.effective_log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        exception_processor: structlog.types.Processor = structlog.processors.format_exc_info
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        exception_processor = structlog.processors.ExceptionPrettyPrinter()

    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([exception_processor] if settings.effective_log_format == "json" else []),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [_start_listener(handler)]
    root.setLevel(settings.log_level)
    # uvicorn installs its own handlers; route them through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    apply_logger_levels(settings)


def apply_logger_levels(settings: Settings) -> dict[str, str]:
    """Chatty libraries at WARNING, then the overrides of ``PULSE_LOG_LEVELS``."""
    levels = dict.fromkeys(QUIET_LIBRARIES, "WARNING")
    levels.update(parse_log_levels(settings.log_levels)[0])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    return levels
