# syntax=docker/dockerfile:1
# Multi-stage build: the builder resolves the locked environment with uv; the runtime
# image carries only the virtualenv, the code and the migrations, and runs as non-root.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS builder
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
RUN pip install --no-cache-dir "uv==0.13.8"
WORKDIR /build
COPY pyproject.toml uv.lock README.md ./
# Only the locked third-party dependencies go into the venv (no dev group); the app's own
# code runs from /app/src so that alembic.ini and alembic/ sit beside it, as in the repo.
RUN uv sync --locked --no-dev --no-install-project

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system pulse && useradd --system --gid pulse --home-dir /app --shell /usr/sbin/nologin pulse
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# app.core.migrations finds alembic.ini and alembic/ relative to /app/src/app.
COPY --chown=pulse:pulse alembic.ini ./
COPY --chown=pulse:pulse alembic ./alembic
COPY --chown=pulse:pulse src ./src
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONPATH=/app/src \
    PYTHONUNBUFFERED=1 \
    PULSE_ENV=production \
    PULSE_HOST=0.0.0.0 \
    PULSE_PORT=8000 \
    PULSE_LOG_FORMAT=json
USER pulse
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status == 200 else 1)"]
# Migrations are a separate, explicit step:  docker run --rm IMAGE python -m app migrate
# uvloop and httptools are selected by `python -m app serve`.
CMD ["python", "-m", "app", "serve"]
