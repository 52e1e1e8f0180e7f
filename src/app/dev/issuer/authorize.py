"""The development issuer's sign-in: authorization code flow with PKCE (RFC 6749, RFC 7636).

``GET /dev-issuer/authorize`` shows a picker (subject, tenants, role, token lifetime); the
choice is remembered in an HttpOnly cookie scoped to ``/dev-issuer`` - the development
stand-in for an identity provider's single sign-on session - so the next sign-in (after a
reload or an expired token) goes straight back without the picker. ``POST /dev-issuer/token``
exchanges a one-time code and its PKCE verifier for an access token minted exactly like
``python -m app token``'s. ``GET /dev-issuer/logout`` ends the session.

Runs only while the development issuer runs (``PULSE_ENV=development``, no
``PULSE_OIDC_ISSUER``); every route answers 404 otherwise. Codes live in this process's
memory for a minute: the development server is one process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import msgspec
import structlog
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie, State
from litestar.response import Redirect

from app.core.errors import error_responses
from app.core.openapi import DEV_ISSUER_PATH
from app.core.settings import Settings
from app.dev.issuer import DevIssuer, DevIssuerRefused
from app.dev.issuer.routes import running_dev_issuer
from app.modules.auth import ROLES

log = structlog.get_logger("app.auth")

CODE_TTL_S = 60
SESSION_COOKIE = "pulse_dev_issuer"
DEFAULT_TTL_S = 8 * 3600
# A short lifetime is allowed here (unlike the CLI's 60 s floor) so that expiry can be tried.
MIN_TTL_S = 5
MAX_TTL_S = 30 * 86400
_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_TENANT = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_SUBJECT = re.compile(r"^[A-Za-z0-9@._:+-]{1,128}$")
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class Choice(msgspec.Struct, kw_only=True, frozen=True):
    """Who the developer signs in as."""

    subject: str
    tenants: list[str]
    role: str
    ttl_s: int


@dataclass(frozen=True)
class Grant:
    client_id: str
    redirect_uri: str
    code_challenge: str
    choice: Choice
    expires_at: float


@dataclass
class DevSignIn:
    """One-time codes and the key that signs the session cookie (per process)."""

    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    codes: dict[str, Grant] = field(default_factory=dict)

    def issue(self, grant: Grant) -> str:
        now = time.monotonic()
        for code in [c for c, g in self.codes.items() if g.expires_at < now]:
            del self.codes[code]
        code = secrets.token_urlsafe(32)
        self.codes[code] = grant
        return code

    def redeem(self, code: str) -> Grant | None:
        grant = self.codes.pop(code, None)
        if grant is None or grant.expires_at < time.monotonic():
            return None
        return grant

    def seal(self, choice: Choice) -> str:
        body = base64.urlsafe_b64encode(msgspec.json.encode(choice)).decode().rstrip("=")
        mac = hmac.new(self.key, body.encode(), hashlib.sha256).hexdigest()
        return f"{body}.{mac}"

    def open(self, value: str | None) -> Choice | None:
        if not value or "." not in value:
            return None
        body, _, mac = value.rpartition(".")
        expected = hmac.new(self.key, body.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, expected):
            return None
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return msgspec.json.decode(raw, type=Choice)
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
            return None


def _running(state: State) -> tuple[DevIssuer, DevSignIn]:
    issuer = running_dev_issuer(state)
    sign_in: DevSignIn | None = getattr(state, "dev_sign_in", None)
    if sign_in is None:
        sign_in = DevSignIn()
        state.dev_sign_in = sign_in
    return issuer, sign_in


def _same_origin(url: str, request: Request[Any, Any, Any]) -> bool:
    """Redirects go back only to the server that serves this issuer (any of its names)."""
    parts = urlsplit(url)
    base = urlsplit(str(request.base_url))
    return parts.scheme in ("http", "https") and (parts.scheme, parts.netloc) == (
        base.scheme,
        base.netloc,
    )


def _page(title: str, body: str, status_code: int = 200) -> Response[str]:
    document = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)} - Pulse development sign-in</title>"
        "<link rel='icon' href='/static/favicon.svg' type='image/svg+xml'>"
        "<link rel='stylesheet' href='/static/pulse.css'></head>"
        f"<body class='dev-signin'><main class='signin-card'>{body}</main></body></html>"
    )
    return Response(document, media_type="text/html", status_code=status_code, headers=PAGE_HEADERS)


def _error_page(message: str) -> Response[str]:
    return _page(
        "Sign-in error",
        f"<h1>Sign-in error</h1><p role='alert'>{html.escape(message)}</p>",
        status_code=400,
    )


@dataclass(frozen=True)
class AuthorizeRequest:
    client_id: str
    redirect_uri: str
    state: str
    code_challenge: str
    prompt: str

    def hidden_fields(self) -> str:
        fields = {
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "state": self.state,
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
            "response_type": "code",
        }
        return "".join(
            f"<input type='hidden' name='{k}' value='{html.escape(v, quote=True)}'>"
            for k, v in fields.items()
        )


def _authorize_request(
    params: dict[str, str], settings: Settings, request: Request[Any, Any, Any]
) -> AuthorizeRequest | str:
    """The checked parameters, or the reason they are refused."""
    if params.get("response_type") != "code":
        return "response_type must be code"
    if params.get("client_id") != settings.oidc_web_client_id:
        return f"unknown client_id (expected {settings.oidc_web_client_id})"
    redirect_uri = params.get("redirect_uri", "")
    if not _same_origin(redirect_uri, request):
        return "redirect_uri must point back at this server"
    if params.get("code_challenge_method") != "S256":
        return "PKCE with code_challenge_method=S256 is required"
    challenge = params.get("code_challenge", "")
    if not _CHALLENGE.match(challenge):
        return "code_challenge must be a base64url SHA-256 digest"
    state = params.get("state", "")
    if not state or len(state) > 512:
        return "state is required"
    return AuthorizeRequest(
        client_id=params["client_id"],
        redirect_uri=redirect_uri,
        state=state,
        code_challenge=challenge,
        prompt=params.get("prompt", ""),
    )


def _choice(form: dict[str, str]) -> Choice | str:
    subject = form.get("subject", "").strip()
    if not _SUBJECT.match(subject):
        return "the user name may use letters, digits and @ . _ : + - (at most 128)"
    tenants = [t for t in re.split(r"[\s,]+", form.get("tenants", "")) if t]
    if not tenants or not all(_TENANT.match(t) for t in tenants):
        return "give one or more tenant ids (lowercase letters, digits, hyphens)"
    role = form.get("role", "")
    if role not in ROLES:
        return "pick a role: viewer, admin or operator"
    try:
        ttl_s = int(form.get("ttl_s", str(DEFAULT_TTL_S)))
    except ValueError:
        return "the token lifetime is a number of seconds"
    if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        return f"the token lifetime is between {MIN_TTL_S} seconds and 30 days"
    return Choice(subject=subject, tenants=tenants, role=role, ttl_s=ttl_s)


def _redirect_with_code(sign_in: DevSignIn, auth: AuthorizeRequest, choice: Choice) -> Redirect:
    code = sign_in.issue(
        Grant(
            client_id=auth.client_id,
            redirect_uri=auth.redirect_uri,
            code_challenge=auth.code_challenge,
            choice=choice,
            expires_at=time.monotonic() + CODE_TTL_S,
        )
    )
    separator = "&" if "?" in auth.redirect_uri else "?"
    target = auth.redirect_uri + separator + urlencode({"code": code, "state": auth.state})
    return Redirect(target, status_code=303, headers={"Cache-Control": "no-store"})


def _picker(auth: AuthorizeRequest, last: Choice | None, problem: str | None) -> Response[str]:
    last = last or Choice(subject="demo-admin", tenants=["demo"], role="admin", ttl_s=DEFAULT_TTL_S)
    radios = "".join(
        f"<label class='choice'><input type='radio' name='role' value='{r}'"
        f"{' checked' if r == last.role else ''}> {r}</label>"
        for r in ROLES
    )
    alert = f"<p class='error' role='alert'>{html.escape(problem)}</p>" if problem else ""
    body = (
        "<h1>Sign in to Pulse</h1>"
        "<p class='muted'>Development issuer: pick who you are. Real deployments sign in"
        " through the configured OpenID Connect provider.</p>"
        f"{alert}"
        f"<form method='post' action='{DEV_ISSUER_PATH}/authorize' class='signin-form'>"
        f"{auth.hidden_fields()}"
        "<label for='subject'>User</label>"
        f"<input id='subject' name='subject' required value='{html.escape(last.subject)}'"
        " autocomplete='username'>"
        "<label for='tenants'>Tenants (comma-separated)</label>"
        f"<input id='tenants' name='tenants' required"
        f" value='{html.escape(', '.join(last.tenants))}'>"
        f"<fieldset><legend>Role</legend>{radios}</fieldset>"
        "<label for='ttl_s'>Token lifetime (seconds)</label>"
        f"<input id='ttl_s' name='ttl_s' type='number' min='{MIN_TTL_S}' max='{MAX_TTL_S}'"
        f" value='{last.ttl_s}'>"
        "<button type='submit' id='sign-in'>Sign in</button>"
        "</form>"
    )
    return _page("Sign in", body)


def _session_cookie(value: str, settings: Settings, *, max_age: int | None = None) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE,
        value=value,
        path=DEV_ISSUER_PATH,
        httponly=True,
        samesite="lax",
        secure=(settings.public_url or "").startswith("https://"),
        max_age=max_age,
    )


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _token_error(error: str, description: str) -> Response[dict[str, str]]:
    return Response(
        {"error": error, "error_description": description},
        status_code=400,
        headers={"Cache-Control": "no-store"},
    )


class DevAuthorizeController(Controller):
    """Authorization, token and logout endpoints of the development issuer."""

    path = DEV_ISSUER_PATH
    tags = ["auth"]
    opt = {"public": True}
    include_in_schema = False

    @get(
        "/authorize",
        operation_id="devIssuerAuthorize",
        summary="Development issuer: sign-in picker (authorization endpoint)",
        responses=error_responses(400, 404),
    )
    async def authorize(
        self, request: Request[Any, Any, Any], state: State
    ) -> Response[str] | Redirect:
        _, sign_in = _running(state)
        settings: Settings = state.settings
        auth = _authorize_request(dict(request.query_params), settings, request)
        if isinstance(auth, str):
            return _error_page(auth)
        remembered = sign_in.open(request.cookies.get(SESSION_COOKIE))
        if remembered is not None and auth.prompt not in ("login", "select_account"):
            log.info("auth.dev_sign_in", subject=remembered.subject, remembered=True)
            return _redirect_with_code(sign_in, auth, remembered)
        return _picker(auth, remembered, None)

    @post(
        "/authorize",
        operation_id="devIssuerAuthorizeSubmit",
        summary="Development issuer: the picker's answer; redirects back with a code",
        status_code=303,
        responses=error_responses(400, 404),
    )
    async def submit(
        self, request: Request[Any, Any, Any], state: State
    ) -> Response[str] | Redirect:
        _, sign_in = _running(state)
        settings: Settings = state.settings
        form = {k: str(v) for k, v in (await request.form()).items()}
        auth = _authorize_request(form, settings, request)
        if isinstance(auth, str):
            return _error_page(auth)
        choice = _choice(form)
        if isinstance(choice, str):
            return _picker(auth, None, choice)
        log.info(
            "auth.dev_sign_in", subject=choice.subject, tenants=choice.tenants, role=choice.role
        )
        redirect = _redirect_with_code(sign_in, auth, choice)
        redirect.cookies.append(_session_cookie(sign_in.seal(choice), settings))
        return redirect

    @post(
        "/token",
        operation_id="devIssuerToken",
        summary="Development issuer: exchange a code and its PKCE verifier for a token",
        status_code=200,
        responses=error_responses(400, 404),
    )
    async def token(self, request: Request[Any, Any, Any], state: State) -> Response[Any]:
        issuer, sign_in = _running(state)
        form = {k: str(v) for k, v in (await request.form()).items()}
        if form.get("grant_type") != "authorization_code":
            return _token_error("unsupported_grant_type", "only authorization_code")
        verifier = form.get("code_verifier", "")
        if not _VERIFIER.match(verifier):
            return _token_error("invalid_request", "code_verifier is required (RFC 7636)")
        grant = sign_in.redeem(form.get("code", ""))
        if grant is None:
            return _token_error("invalid_grant", "the code is unknown, used or expired")
        if form.get("client_id") != grant.client_id:
            return _token_error("invalid_grant", "the code was issued to another client")
        if form.get("redirect_uri") != grant.redirect_uri:
            return _token_error("invalid_grant", "redirect_uri differs from the authorization")
        if not hmac.compare_digest(_s256(verifier), grant.code_challenge):
            return _token_error("invalid_grant", "the PKCE verifier does not match")
        choice = grant.choice
        try:
            token = issuer.mint(
                tenants=choice.tenants, role=choice.role, subject=choice.subject, ttl_s=choice.ttl_s
            )
        except DevIssuerRefused as exc:
            return _token_error("invalid_grant", str(exc))
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": choice.ttl_s,
            "scope": "openid",
        }
        return Response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    @get(
        "/logout",
        operation_id="devIssuerLogout",
        summary="Development issuer: end the sign-in session (end-session endpoint)",
        responses=error_responses(404),
    )
    async def logout(
        self, request: Request[Any, Any, Any], state: State
    ) -> Response[str] | Redirect:
        _running(state)
        settings: Settings = state.settings
        cleared = _session_cookie("", settings, max_age=0)
        target = request.query_params.get("post_logout_redirect_uri", "")
        if target and _same_origin(target, request):
            return Redirect(target, status_code=303, cookies=[cleared])
        page = _page("Signed out", "<h1>Signed out</h1><p><a href='/'>Sign in again</a></p>")
        page.cookies.append(cleared)
        return page
