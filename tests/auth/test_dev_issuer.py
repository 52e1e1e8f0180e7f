"""The development issuer: local keys, discovery/JWKS on the app, `python -m app token`."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import jwt
import pytest

from app.core.lifespan import ConfigurationError
from app.core.settings import Settings
from app.main import create_app
from tests.conftest import make_settings, serve_in_process

ME = "/api/v1/me"


def dev_settings(settings: Settings, data_dir: Path, **overrides: object) -> Settings:
    return make_settings(
        settings.database_url or "",
        env="development",
        oidc_issuer=None,
        data_dir=str(data_dir),
        **overrides,
    )


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        *args,
        env={"PATH": os.environ.get("PATH", ""), **env},
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_dev_issuer_serves_discovery_and_jwks_and_its_tokens_pass_validation(
    settings: Settings, clean_tables: None, tmp_path: Path
) -> None:
    app = create_app(dev_settings(settings, tmp_path, public_url="http://localhost:8000"))
    async with serve_in_process(app) as http:
        discovery = await http.get("/dev-issuer/.well-known/openid-configuration")
        assert discovery.status_code == 200
        assert discovery.json()["issuer"] == "http://localhost:8000/dev-issuer"
        assert discovery.json()["jwks_uri"] == "http://localhost:8000/dev-issuer/jwks.json"
        jwks = (await http.get("/dev-issuer/jwks.json")).json()
        assert [k["kty"] for k in jwks["keys"]] == ["EC"]
        assert "d" not in jwks["keys"][0]

        token = app.state.dev_issuer.mint(tenants=["demo"], role="admin")
        response = await http.get(ME, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        assert response.json()["tenants"] == ["demo"]
        assert response.json()["roles"] == ["admin"]
        # Same validation path as a real IdP: a forged payload fails.
        head, _, sig = token.split(".")
        forged = jwt.utils.base64url_encode(b'{"sub":"x","roles":["operator"]}').decode()
        bad = await http.get(ME, headers={"Authorization": f"Bearer {head}.{forged}.{sig}"})
        assert bad.status_code == 401
    key_file = tmp_path / "dev-issuer" / "signing-key.pem"
    assert (await asyncio.to_thread(key_file.stat)).st_mode & 0o077 == 0


async def test_token_command_prints_only_a_token_the_app_accepts(
    settings: Settings, clean_tables: None, tmp_path: Path
) -> None:
    env = {"PULSE_ENV": "development", "PULSE_DATA_DIR": str(tmp_path)}
    code, out, err = await run_cli(
        "token", "--tenant", "demo", "--role", "viewer", env=env, cwd=tmp_path
    )
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1
    token = lines[0]
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    app = create_app(dev_settings(settings, tmp_path))
    async with serve_in_process(app) as http:
        response = await http.get(ME, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        assert response.json()["roles"] == ["viewer"]
        assert response.json()["subject"] == "dev-user"


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        (
            {
                "PULSE_ENV": "production",
                "PULSE_DATABASE_URL": "postgresql://u@127.0.0.1/db",
                "PULSE_SECRET_KEY": "k" * 32,
            },
            "production",
        ),
        ({"PULSE_ENV": "development", "PULSE_OIDC_ISSUER": "https://idp.example"}, "OIDC_ISSUER"),
        ({"PULSE_ENV": "test"}, "development"),
    ],
)
async def test_token_command_refuses_outside_development(
    tmp_path: Path, env: dict[str, str], reason: str
) -> None:
    code, out, err = await run_cli(
        "token", env={**env, "PULSE_DATA_DIR": str(tmp_path)}, cwd=tmp_path
    )
    assert code == 2
    assert out == ""
    assert reason in err
    assert not await asyncio.to_thread((tmp_path / "dev-issuer").exists)


async def test_production_without_an_issuer_refuses_to_start(
    settings: Settings, clean_tables: None, tmp_path: Path
) -> None:
    production = make_settings(
        settings.database_url or "", env="production", oidc_issuer=None, data_dir=str(tmp_path)
    )
    with pytest.raises(BaseException) as caught:  # noqa: PT011 - unwrapped below
        async with serve_in_process(create_app(production)):
            pass
    error = caught.value
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, ConfigurationError)
    assert "PULSE_OIDC_ISSUER is required" in str(error)


async def test_dev_issuer_routes_are_404_when_a_real_issuer_is_configured(
    client: object,
) -> None:
    import httpx

    assert isinstance(client, httpx.AsyncClient)
    assert (await client.get("/dev-issuer/jwks.json")).status_code == 404


async def test_dev_operator_tokens_carry_the_issuers_own_grant_not_a_role_name(
    settings: Settings, clean_tables: None, tmp_path: Path
) -> None:
    # No operator claim configured: the development issuer grants operator with its own
    # claim (only its local key signs it); a role named "operator" still grants nothing.
    dev = dev_settings(settings, tmp_path, oidc_operator_claim=None, oidc_operator_value=None)
    env = {"PULSE_ENV": "development", "PULSE_DATA_DIR": str(tmp_path)}
    code, out, err = await run_cli("token", "--role", "operator", env=env, cwd=tmp_path)
    assert code == 0, err
    operator = out.strip()
    assert "operator" not in jwt.decode(operator, options={"verify_signature": False})["roles"]
    app = create_app(dev)
    async with serve_in_process(app) as http:
        me = await http.get(ME, headers={"Authorization": f"Bearer {operator}"})
        assert me.status_code == 200, me.text
        assert me.json()["is_operator"] is True
        issuer = app.state.dev_issuer
        claims = jwt.decode(
            issuer.mint(tenants=["demo"], role="viewer"), options={"verify_signature": False}
        )
        claims["roles"] = ["operator"]
        forged_role = jwt.encode(
            claims,
            issuer.key,
            algorithm="ES256",
            headers={"kid": issuer.jwk["kid"], "typ": "at+jwt"},
        )
        me = await http.get(ME, headers={"Authorization": f"Bearer {forged_role}"})
        assert me.status_code == 200, me.text
        assert me.json()["is_operator"] is False
        listed = await http.get(
            "/api/v1/tenants", headers={"Authorization": f"Bearer {forged_role}"}
        )
        assert listed.status_code == 403
