"""notifications: email through a transactional outbox - import alerts, weekly digest,
admin API (the development SMTP catcher is ``app.dev.mail``).

Public interface (everything other modules may import):
- :func:`notify_run_outcome` - called by ingestion in the transaction that records a
  run's final outcome, with the :class:`EmailLinks` its emails link with.
- :func:`enqueue_email` - queue a rendered email in the caller's transaction.
- ``module`` - routes and the lifespan hook (sender, digest scheduler).
"""

from __future__ import annotations

from app.modules import Module
from app.modules.notifications.deps import dependencies
from app.modules.notifications.lifespan import notifications_lifespan
from app.modules.notifications.links import EmailLinks
from app.modules.notifications.routes import NotificationsController
from app.modules.notifications.service import enqueue_email, notify_run_outcome

module = Module(
    name="notifications",
    route_handlers=[NotificationsController],
    dependencies=dependencies,
    lifespan=[notifications_lifespan],
)

__all__ = ["EmailLinks", "enqueue_email", "module", "notify_run_outcome"]
