"""The OpenAPI UI in a real headless Chromium: served from the pinned wheel (no request
leaves the machine), sign-in through the development issuer with the authorization code
flow and PKCE, then an authenticated call from the UI."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from app.main import create_app
from tests.conftest import make_settings
from tests.fixtures.browser import PageFor, PulseWeb, save_artifact

TIMEOUT_MS = 30_000


def _record_hosts(page: Any, base_url: str) -> tuple[list[str], list[str]]:
    """Every request URL of the page (and its pop-ups), and those to another host."""
    seen: list[str] = []
    foreign: list[str] = []
    origin = urlsplit(base_url).netloc

    def on_request(request: Any) -> None:
        url = request.url
        seen.append(url)
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != origin:
            foreign.append(url)

    page.context.on("request", on_request)
    return seen, foreign


async def test_schema_ui_loads_only_local_assets(pulse_web: PulseWeb, page_for: PageFor) -> None:
    page, problems = await page_for(width=1366, height=900)
    seen, foreign = _record_hosts(page, pulse_web.base_url)
    for path in ("/schema", "/schema/swagger"):
        await page.goto(pulse_web.base_url + path)
        await page.wait_for_selector("button.authorize", timeout=TIMEOUT_MS)
        await page.wait_for_selector("#operations-auth-getMe", timeout=TIMEOUT_MS)
    assert foreign == [], foreign
    assert any("/schema/ui/swagger-ui-5.31.0/swagger-ui-bundle.js" in url for url in seen), seen
    assert any("/schema/ui/swagger-ui-5.31.0/favicon-32x32.png" in url for url in seen), seen
    problems.check()


async def test_schema_ui_signs_in_with_pkce_and_calls_the_api(
    pulse_web: PulseWeb, page_for: PageFor
) -> None:
    page, problems = await page_for(width=1366, height=900)
    seen, foreign = _record_hosts(page, pulse_web.base_url)
    await page.goto(pulse_web.base_url + "/schema")
    await page.click("button.authorize", timeout=TIMEOUT_MS)
    oidc = page.locator(".auth-container", has_text="OIDC")
    # The public client id comes from the settings; no secret for a PKCE client.
    assert await oidc.locator("input[id^=client_id]").input_value() == "pulse-dashboard"
    async with page.expect_popup(timeout=TIMEOUT_MS) as popup_info:
        await oidc.locator("button.authorize").click()
    popup = await popup_info.value
    await popup.wait_for_selector("#sign-in", timeout=TIMEOUT_MS)
    authorize = urlsplit(popup.url)
    assert authorize.path == "/dev-issuer/authorize"
    assert "code_challenge_method=S256" in authorize.query
    await popup.fill("#subject", "swagger-admin")
    await popup.fill("#tenants", "acme")
    await popup.check("input[name=role][value=admin]")
    async with popup.expect_event("close", timeout=TIMEOUT_MS):
        await popup.click("#sign-in")
    # Signed in: the scheme now offers "Logout".
    await oidc.locator("button", has_text="Logout").wait_for(timeout=TIMEOUT_MS)
    await page.click("button.close-modal")

    operation = page.locator("#operations-auth-getMe")
    await operation.locator(".opblock-summary").click()
    await operation.locator("button.try-out__btn").click()
    async with page.expect_response(
        lambda r: urlsplit(r.url).path == "/api/v1/me", timeout=TIMEOUT_MS
    ) as answer_info:
        await operation.locator("button.execute").click()
    answer = await answer_info.value
    assert answer.status == 200, await answer.text()
    assert (await answer.json())["subject"] == "swagger-admin"
    assert (await answer.request.all_headers())["authorization"].startswith("Bearer ")
    await operation.locator(".live-responses-table .response-col_status", has_text="200").wait_for(
        timeout=TIMEOUT_MS
    )
    await save_artifact("openapi-ui-signed-in.png", await page.screenshot(full_page=False))
    assert any("/dev-issuer/token" in url for url in seen), seen
    assert foreign == [], foreign
    problems.check()


async def test_openapi_document_declares_oidc_code_flow_and_bearer(pulse_web: PulseWeb) -> None:
    document = (await pulse_web.api.get("/schema/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["BearerAuth"]["scheme"] == "bearer"
    flow = schemes["OIDC"]["flows"]["authorizationCode"]
    assert flow["authorizationUrl"] == "/dev-issuer/authorize"
    assert flow["tokenUrl"] == "/dev-issuer/token"
    assert {"BearerAuth": []} in document["security"]
    assert {"OIDC": []} in document["security"]


def test_with_a_real_issuer_the_document_declares_its_discovery(database_url: str) -> None:
    settings = make_settings(
        database_url, env="production", oidc_issuer="https://idp.example/realms/acme/"
    )
    document = create_app(settings).openapi_schema.to_schema()
    oidc = document["components"]["securitySchemes"]["OIDC"]
    assert oidc["type"] == "openIdConnect"
    assert oidc["openIdConnectUrl"] == (
        "https://idp.example/realms/acme/.well-known/openid-configuration"
    )


async def test_ui_bundle_is_cached_by_the_browser_and_not_gzipped_on_the_loop(
    pulse_web: PulseWeb,
) -> None:
    answer = await pulse_web.api.get(
        "/schema/ui/swagger-ui-5.31.0/swagger-ui-bundle.js",
        headers={"Accept-Encoding": "gzip"},
    )
    assert answer.status_code == 200
    assert "content-encoding" not in answer.headers
    assert "max-age=2592000" in answer.headers["cache-control"]
    assert len(answer.content) > 500_000
    # The rest of the API is still compressed.
    document = await pulse_web.api.get("/schema/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert document.headers.get("content-encoding") == "gzip"
