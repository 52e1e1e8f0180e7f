"""Domain errors and their one mapping to ``application/problem+json`` (RFC 9457).

Services raise the small hierarchy below; nothing else in the app builds error
responses. A 5xx never carries a stack trace, SQL or a secret: only a title,
a generic detail and the request id that points at the log line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap
from sqlalchemy import exc as sa_exc

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger("app.errors")


class PulseError(Exception):
    """Base of all expected errors. ``detail`` is shown to the caller, so keep it safe."""

    status_code = 400
    title = "Bad Request"

    def __init__(
        self,
        detail: str,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


class Invalid(PulseError):
    """The request is well-formed JSON but asks for something that is not allowed."""

    status_code = 400
    title = "Invalid request"

    def __init__(self, detail: str, *, field: str | None = None, **kwargs: Any) -> None:
        extra = dict(kwargs.pop("extra", None) or {})
        if field is not None:
            extra.setdefault("field", field)
        super().__init__(detail, extra=extra, **kwargs)


class Unauthorized(PulseError):
    status_code = 401
    title = "Unauthorized"


class Forbidden(PulseError):
    status_code = 403
    title = "Forbidden"


class NotFound(PulseError):
    status_code = 404
    title = "Not Found"


class Conflict(PulseError):
    status_code = 409
    title = "Conflict"


class TooManyRequests(PulseError):
    status_code = 429
    title = "Too Many Requests"


class Unavailable(PulseError):
    status_code = 503
    title = "Service Unavailable"


# SQLSTATE classes that mean "the database is not there right now", not "your query is wrong".
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300", "57014")


def is_database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means PostgreSQL cannot be reached, is shutting down, or stopped
    answering (a connect, pool or request timeout: a frozen server looks like that)."""
    if isinstance(exc, sa_exc.TimeoutError | TimeoutError):  # pool checkout, connect, request
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
            return True
        cause = exc.orig.__cause__ if exc.orig is not None else None
        return isinstance(cause, OSError | TimeoutError) or _is_asyncpg_connection_error(cause)
    return _is_asyncpg_connection_error(exc) or isinstance(exc, ConnectionError)


def _is_asyncpg_connection_error(exc: BaseException | None) -> bool:
    import asyncpg

    # InterfaceError covers ConnectionDoesNotExistError (the server went away mid-use);
    # InternalClientError covers protocol states the driver cannot continue from.
    return isinstance(
        exc,
        asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.InternalClientError
        | asyncpg.exceptions.CannotConnectNowError,
    )


def problem(
    request: Request[Any, Any, Any],
    status: int,
    title: str,
    detail: str,
    *,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    request_id = request.scope.get("state", {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {}))


def _pulse_error(request: Request[Any, Any, Any], exc: PulseError) -> Response[dict[str, Any]]:
    return problem(
        request, exc.status_code, exc.title, exc.detail, extra=exc.extra, headers=exc.headers
    )


# Words for string formats checked by a regular expression (a module registers its own):
# a caller is told "must be an email address", not shown the expression.
_FORMAT_WORDS: dict[str, str] = {}
_REGEX_PREFIX = "Expected `str` matching regex "


def describe_format(pattern: str, words: str) -> None:
    """Name a ``msgspec.Meta(pattern=...)`` format in validation errors, e.g.
    ``describe_format(EMAIL_PATTERN, "an email address such as ops@example.com")``."""
    _FORMAT_WORDS[pattern] = words


def _plain_error(error: Any) -> Any:
    """One of Litestar's validation errors with its message in the user's words."""
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return error
    message: str = error["message"]
    if error.get("key") == "data" and message == "'data'":
        message = (
            "the request has no JSON body; send a JSON object"
            " (Content-Type: application/json), `{}` where every field has a default"
        )
    elif message.startswith(_REGEX_PREFIX):
        pattern = message.removeprefix(_REGEX_PREFIX)
        with contextlib.suppress(msgspec.DecodeError):  # it is quoted and escaped
            pattern = msgspec.json.decode(pattern, type=str)
        words = _FORMAT_WORDS.get(pattern)
        message = f"must be {words}" if words else "does not have the expected format"
    return {**error, "message": message}


def _http_exception(
    request: Request[Any, Any, Any], exc: HTTPException
) -> Response[dict[str, Any]]:
    extra: dict[str, Any] = {}
    title = _TITLES.get(exc.status_code, "Error")
    detail = exc.detail or title
    if isinstance(exc, ValidationException) and exc.extra:
        errors = [_plain_error(e) for e in exc.extra] if isinstance(exc.extra, list) else exc.extra
        extra["errors"] = errors
        first = errors[0] if isinstance(errors, list) and errors else None
        if isinstance(first, dict) and isinstance(first.get("message"), str):
            where = first.get("key")
            if where == "data":
                detail = f"Invalid request: {first['message']}."
            else:
                detail = f"Invalid request: {where or 'the body'} {first['message']}."
    if exc.status_code >= HTTP_500_INTERNAL_SERVER_ERROR:
        log.error("http.server_error", status=exc.status_code, detail=exc.detail)
        detail = title
    return problem(request, exc.status_code, title, detail, extra=extra, headers=exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if is_database_unavailable(exc):
        log.warning("db.unavailable", error=type(exc).__name__, path=request.url.path)
        detail = (
            "The database did not answer in time; try again shortly."
            if isinstance(exc, TimeoutError | sa_exc.TimeoutError)
            else "The database is unavailable; try again shortly."
        )
        return problem(request, 503, "Service Unavailable", detail, headers={"Retry-After": "5"})
    # The exception (class and traceback, no frame locals) is captured here, at the call
    # site; request_id explicitly, since this handler may run outside the request's context.
    log.error(
        "http.unhandled_error",
        method=request.method,
        path=request.url.path,
        request_id=request.scope.get("state", {}).get("request_id"),
        exc_info=exc,
    )
    return problem(
        request,
        HTTP_500_INTERNAL_SERVER_ERROR,
        "Internal Server Error",
        "An unexpected error occurred; quote the request id when reporting it.",
    )


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(msgspec.Struct, omit_defaults=True):
    """The problem+json body every error response carries (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI declarations of the error responses a route can give."""
    return {
        code: ResponseSpec(
            data_container=Problem,
            description=_TITLES.get(code, "Error"),
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
        for code in codes
    }


exception_handlers: ExceptionHandlersMap = {
    PulseError: _pulse_error,
    HTTPException: _http_exception,
    Exception: _unexpected,
}
