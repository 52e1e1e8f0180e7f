"""Web: the dashboard people open in a browser, served by Pulse itself.

Server-rendered HTML shells plus small hand-written JavaScript modules under ``/static/``
that sign in with OpenID Connect (authorization code + PKCE) and call Pulse's own JSON
API with the access token kept in memory. Strict Content-Security-Policy, no third-party
hosts. Every route here is public in the auth sense: pages carry no data; the data comes
from the API with the token.
"""

from __future__ import annotations

from app.modules import Module
from app.modules.web.deps import dependencies
from app.modules.web.lifespan import web_lifespan
from app.modules.web.routes import StaticController, WebController

module = Module(
    name="web",
    route_handlers=[WebController, StaticController],
    dependencies=dependencies,
    lifespan=[web_lifespan],
)

__all__ = ["module"]
