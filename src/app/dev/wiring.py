"""What development adds to the app: the local OIDC issuer with its sign-in pages, and the
SMTP catcher with its mailbox. ``create_app`` installs this module first, and only with
``PULSE_ENV=development``; production modules never import ``app.dev``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from litestar import Litestar

from app.core.lifespan import ConfigurationError
from app.core.settings import Settings
from app.dev.issuer import DevIssuer, DevIssuerRefused
from app.dev.issuer.authorize import DevAuthorizeController
from app.dev.issuer.routes import DevIssuerController
from app.dev.mail import MailCatcher, dev_mail_handler, dev_mail_page_handler
from app.modules import Module


@asynccontextmanager
async def dev_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Start the issuer (before auth's hook reads it) and the catcher (before the sender
    targets it); the catcher stops after every module's hook has exited."""
    state: Any = app.state
    settings: Settings = state.settings
    async with AsyncExitStack() as stack:
        if settings.runs_dev_issuer:
            try:
                state.dev_issuer = await asyncio.to_thread(DevIssuer.from_settings, settings)
            except DevIssuerRefused as exc:
                raise ConfigurationError(str(exc)) from exc
        if not settings.smtp_host:
            catcher = MailCatcher()
            state.dev_smtp_port = await catcher.start(settings.smtp_catcher_port)
            stack.push_async_callback(catcher.stop)
            state.mail_catcher = catcher
            # Registered only here, so the routes do not exist without the catcher.
            app.register(dev_mail_handler())
            app.register(dev_mail_page_handler())
        yield


module = Module(
    name="dev",
    route_handlers=[DevIssuerController, DevAuthorizeController],
    lifespan=[dev_lifespan],
)
