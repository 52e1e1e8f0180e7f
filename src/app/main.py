"""The application factory. Importing this module connects to nothing."""

from __future__ import annotations

from litestar import Litestar
from litestar.config.compression import CompressionConfig
from litestar.di import Provide

from app import modules
from app.core.db import get_database, provide_db_session
from app.core.errors import exception_handlers
from app.core.health import HealthController
from app.core.lifespan import build_lifespan
from app.core.logging import configure_logging
from app.core.metrics import (
    Metrics,
    add_request_id_header,
    metrics_endpoint,
    observability_middleware,
)
from app.core.openapi import UNCOMPRESSED_PATHS, openapi_assets, openapi_config
from app.core.settings import Settings, load_settings, provide_settings
from app.core.validation import (
    MAX_BODY_BYTES,
    PulseRequest,
    declare_problem_400,
    reject_nul_in_url,
)

VERSION = "0.1.0"


def create_app(settings: Settings | None = None) -> Litestar:
    """Assemble core and modules into one Litestar app; resources start in the lifespan."""
    settings = settings or load_settings()
    configure_logging(settings)
    metrics = Metrics()
    installed = modules.installed()
    if settings.env == "development":
        # Imported here so that production never loads development-only code.
        from app.dev.wiring import module as development

        installed = [development, *installed]
    app = Litestar(
        route_handlers=[
            HealthController,
            metrics_endpoint,
            openapi_assets(),
            *(handler for module in installed for handler in module.route_handlers),
        ],
        dependencies={
            "db_session": Provide(provide_db_session),
            "db": Provide(get_database, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
            **{k: v for module in installed for k, v in module.dependencies.items()},
        },
        guards=[guard for module in installed for guard in module.guards],
        middleware=[observability_middleware(metrics), reject_nul_in_url],
        request_class=PulseRequest,
        request_max_body_size=MAX_BODY_BYTES,
        before_send=[add_request_id_header],
        exception_handlers=exception_handlers,
        lifespan=[build_lifespan(settings, metrics, [h for m in installed for h in m.lifespan])],
        openapi_config=openapi_config(settings, VERSION),
        compression_config=CompressionConfig(
            backend="gzip", minimum_size=1024, exclude=UNCOMPRESSED_PATHS
        ),
        logging_config=None,
        debug=False,
    )
    declare_problem_400(app)
    app.state.settings = settings
    app.state.metrics = metrics
    return app
