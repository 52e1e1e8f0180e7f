"""Input validation at the edge: what PostgreSQL cannot store never reaches it.

- ``Text``: a string without NUL (``\\u0000``), which PostgreSQL refuses in ``text`` and
  ``jsonb``. Every schema field that is stored as text is a ``Text`` (with its own length
  bounds), so the 400 names the field and the OpenAPI document shows the pattern.
- ``BIGINT_MAX``: integers that reach SQL (limits, offsets) stay within ``bigint``.
- :class:`PulseRequest` decodes a JSON body once, strictly (``"60"`` is not an integer),
  against the handler's declared body type, bounded in depth, and finds NUL even in
  free-form (``Any``) parts of the body, naming the field.
- :func:`reject_nul_in_url`: a NUL in the path or a query parameter is a 400 before any
  guard, lookup or query sees it.
- ``MAX_BODY_BYTES``: larger request bodies answer 413 (Litestar's ``request_max_body_size``).
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import parse_qsl

import msgspec
from litestar import Litestar, Request
from litestar.enums import ScopeType
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, Receive, Scope, Send
from litestar.types.empty import Empty

from app.core.errors import error_responses

NO_NUL_PATTERN = r"^[^\x00]*$"
Text = Annotated[
    str,
    msgspec.Meta(
        pattern=NO_NUL_PATTERN,
        description="Text without NUL (\\u0000) characters.",
    ),
]
BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1
# Deepest nesting a request body may have. Pulse's own bodies nest at most ~5 levels;
# the limit only has to stay far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 32
MAX_BODY_BYTES = 1024 * 1024

NUL_MESSAGE = "must not contain the NUL character (\\u0000)"
# msgspec's wording -> the user's words, for the constraints declared in this module.
_HUMAN_MESSAGES = {f"Expected `str` matching regex {NO_NUL_PATTERN!r}": NUL_MESSAGE}
_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")
# A JSON escape of NUL that is not itself an escaped backslash followed by "u0000".
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def described(regex: str, words: str) -> str:
    """Register the user's words for a ``pattern`` constraint (e.g. "must be a host name");
    returns ``regex`` for use in ``msgspec.Meta(pattern=...)``."""
    _HUMAN_MESSAGES[f"Expected `str` matching regex {regex!r}"] = words
    return regex


def explain(exc: msgspec.ValidationError) -> tuple[str, str | None]:
    """(what was wrong in the user's words, dotted path of the field or None)."""
    message, path = _split_msgspec_error(exc)
    return human_message(message), path


def human_message(message: str) -> str:
    """msgspec's validation message, in the words of the API's users where they differ."""
    return _HUMAN_MESSAGES.get(message, message)


def invalid_body(message: str, key: str | None) -> ValidationException:
    """A 400 naming the body field at ``key`` (dotted path), shaped like Litestar's own."""
    message = human_message(message)
    error: dict[str, str] = {"message": message, "source": "body"}
    if key:
        error["key"] = key
    where = f" at `{key}`" if key else ""
    detail = f"Invalid request body{where}: {message}"
    return ValidationException(detail=detail, extra=[error])


def _split_msgspec_error(exc: msgspec.ValidationError) -> tuple[str, str | None]:
    text = str(exc)
    match = _PATH_RE.search(text)
    if match is None:
        return text, None
    path = match.group("path").lstrip(".")
    return text[: match.start()], path or None


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any, int]]:
    """Every (path, value, depth) in a decoded JSON value, iteratively (no recursion)."""
    stack: list[tuple[str, Any, int]] = [(path, value, 1)]
    while stack:
        here, item, depth = stack.pop()
        yield here, item, depth
        if isinstance(item, dict):
            for key, child in item.items():
                yield here, key, depth  # a bad key is reported at its object
                stack.append((f"{here}.{key}" if here else str(key), child, depth + 1))
        elif isinstance(item, list):
            stack.extend((f"{here}[{i}]", child, depth + 1) for i, child in enumerate(item))


def check_json_value(value: Any) -> None:
    """Raise a 400 for nesting deeper than ``MAX_JSON_DEPTH`` or a NUL anywhere in ``value``."""
    for path, item, depth in _walk(value):
        if depth > MAX_JSON_DEPTH:
            raise invalid_body(f"is nested deeper than {MAX_JSON_DEPTH} levels", path or None)
        if isinstance(item, str) and "\x00" in item:
            raise invalid_body(NUL_MESSAGE, path or None)


def decode_json_body(body: bytes, body_type: Any = Any) -> Any:
    """Decode a request body strictly as ``body_type``; every problem is a 400 naming the field."""
    # Counting brackets is C-speed; only a body with more of them than the depth limit
    # (or with a NUL escape) is walked in Python after decoding.
    suspicious = (body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH) or bool(
        _NUL_ESCAPE.search(body)
    )
    try:
        if suspicious:
            check_json_value(msgspec.json.decode(body))
        return msgspec.json.decode(body, type=body_type, strict=True)
    except RecursionError:
        raise invalid_body(f"is nested deeper than {MAX_JSON_DEPTH} levels", None) from None
    except msgspec.ValidationError as exc:
        message, key = _split_msgspec_error(exc)
        raise invalid_body(message, key) from None
    except msgspec.DecodeError as exc:
        raise invalid_body(f"is not valid JSON ({exc})", None) from None


class PulseRequest(Request[Any, Any, Any]):
    """Litestar's request, with the JSON body decoded by :func:`decode_json_body`.

    Litestar decodes the body untyped and then converts it leniently (``"60"`` becomes
    60, a 1,000-deep array is a ``RecursionError``). Decoding here, against the handler's
    ``data`` type, is strict and bounded; Litestar passes the decoded Struct through.
    """

    async def json(self) -> Any:
        if self._json is Empty:
            if (cached := self._connection_state.json) is not Empty:
                self._json = cached
            else:
                body = await self.body()
                data_field = self.route_handler.parsed_data_field
                body_type = data_field.annotation if data_field is not None else Any
                self._json = self._connection_state.json = decode_json_body(
                    body or b"null", body_type
                )
        return self._json


def _nul_in_url(scope: Scope) -> str | None:
    if "\x00" in scope.get("path", ""):
        return "path"
    query = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in key or "\x00" in value:
                return key.replace("\x00", "\\u0000")
        return "query"
    return None


def reject_nul_in_url(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: a NUL in the path or query string is a 400 problem+json naming it."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and (where := _nul_in_url(scope)) is not None:
            source = "path" if where == "path" else "query"
            raise ValidationException(
                detail=f"`{where}` {NUL_MESSAGE}",
                extra=[{"message": NUL_MESSAGE, "key": where, "source": source}],
            )
        await app(scope, receive, send)

    return middleware


_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules", "leapseconds", "leap-seconds"})
_zone_names: frozenset[str] | None = None


def iana_zone_names() -> frozenset[str]:
    """IANA zone names from the tz database. The first call reads the disk: make it at
    import time (a module that validates zones calls it at its top level), never on the loop."""
    global _zone_names
    if _zone_names is None:
        _zone_names = frozenset(zoneinfo.available_timezones() - _NOT_ZONES)
    return _zone_names


def declare_problem_400(app: Litestar) -> None:
    """Declare every route's 400 as the problem+json it is.

    Litestar documents an undeclared 400 as its own ``{status_code, detail}`` JSON, which
    Pulse never sends (its handler answers problem+json): a contract test would rightly
    flag it. Call once after the app is built (routes added later declare their own).
    """
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if isinstance(handler, HTTPRouteHandler) and 400 not in (handler.responses or {}):
                handler.responses = {**(handler.responses or {}), **error_responses(400)}
