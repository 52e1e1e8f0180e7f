"""Structured logging: JSON in production, readable console lines in development.

Context bound with ``structlog.contextvars`` appears on every line logged inside it,
including library logs routed through the standard ``logging`` module (uvicorn,
sqlalchemy, asyncssh). What is bound:

- ``request_id`` on every line logged while a request is handled (the observability
  middleware; the same id is sent back as ``X-Request-ID``);
- ``tenant_id`` and ``run_id`` on every line of an import run (the runner binds them in
  the run's task, whose helper tasks inherit them; the reaper binds them per expired
  run), plus the ``request_id`` of the request that queued the run, if one did;
- ``email_id`` (the outbox id) and ``tenant_id`` on every line the outbox sender logs
  while it handles one email, plus the ``request_id`` of the request that queued it.

A request's id follows the work it causes through the database, not the process: a run
or an email queued while a request is handled records :func:`current_request_id` on its
row, and the runner or the sender binds it again when it picks the row up (on any
replica, after any number of retries). An alert email queued by a run inherits the run's
request id the same way. The import worker processes log without this context.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
import traceback
from types import TracebackType
from typing import Any, TextIO

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

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _exc_info_of(value: Any) -> ExcInfo | None:
    """``exc_info`` as a log call may give it: True (the one being handled), an exception,
    or a ``sys.exc_info()`` tuple."""
    if value is True:
        value = sys.exc_info()
    elif isinstance(value, BaseException):
        value = (type(value), value, value.__traceback__)
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value
    return None


def _class_name(exc_type: type[BaseException]) -> str:
    module = exc_type.__module__
    return exc_type.__qualname__ if module == "builtins" else f"{module}.{exc_type.__qualname__}"


def capture_exception(
    _logger: Any, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """At the call site: replace ``exc_info`` by a snapshot of the exception (its class and
    frames, never their local variables) that the listener thread can still render.

    ``exc_info=True`` means "the exception being handled" - which the listener thread,
    rendering later, no longer has. The snapshot reads no source file here (lines are looked
    up when the listener formats it), so this stays cheap on the event loop."""
    value = event_dict.get("exc_info")
    if value is None or value is False or isinstance(value, traceback.TracebackException):
        return event_dict
    exc_info = _exc_info_of(value)
    if exc_info is None:
        del event_dict["exc_info"]
        return event_dict
    event_dict.setdefault("exc_type", _class_name(exc_info[0]))
    event_dict["exc_info"] = traceback.TracebackException(
        *exc_info, lookup_lines=False, capture_locals=False
    )
    return event_dict


def render_exception(
    _logger: Any, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """In the listener thread: the captured exception as plain traceback text under
    ``exception`` (both formats). Frame locals are never rendered: they hold passwords,
    private keys and tokens."""
    value = event_dict.pop("exc_info", None)
    if isinstance(value, traceback.TracebackException):
        event_dict["exception"] = "".join(value.format()).rstrip("\n")
    return event_dict


_SHARED_PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
    capture_exception,
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


def current_request_id() -> str | None:
    """The id of the request being handled, if any: what a run or an email queued by it
    records, so their own log lines carry it later."""
    value = structlog.contextvars.get_contextvars().get("request_id")
    return str(value) if value else None


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger once per process.

    ``stream``: where lines go (stderr by default; tests capture the real output with it).
    """
    out = stream if stream is not None else sys.stderr
    renderer: structlog.types.Processor
    if settings.effective_log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        # plain_traceback: the default (rich) formatter prints every frame's locals.
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )

    structlog.configure(
        processors=[
            # First: an event below its logger's level costs one level check, not the
            # chain (a debug line on the stats hot path took 6% of a cached answer).
            structlog.stdlib.filter_by_level,
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
            render_exception,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
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
