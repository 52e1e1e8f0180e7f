"""The blocking side of the ``bigquery_ga4`` connector: client, tables, jobs, pages, errors.

Everything here blocks (google-cloud-bigquery speaks HTTP with ``requests``), so the
connector only ever calls it through the app's bounded BigQuery thread pool. Each call
is short: waiting for a job is done in slices so a cancelled run frees its thread
within one slice and the job can be cancelled server-side.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import bigquery
from google.oauth2 import service_account

from app.modules.ingestion.connectors.base import ConnectorError, TerminalError, TransientError
from app.modules.ingestion.connectors.bigquery_mapping import (
    DAILY_TABLE,
    INTRADAY_TABLE,
    parse_suffix,
    schema_fields,
    suffix,
    to_row,
)

_SCOPES = ("https://www.googleapis.com/auth/bigquery.readonly",)
# Reasons BigQuery attaches to a 403/400 that a later attempt may get past.
_TRANSIENT_REASONS = frozenset(
    {"rateLimitExceeded", "quotaExceeded", "backendError", "internalError", "jobRateLimitExceeded"}
)


@dataclass
class ExportTables:
    """The GA4 export tables of a dataset, by day."""

    daily: set[date]
    intraday: set[date]
    newest: str | None


def make_client(
    project: str,
    location: str | None,
    api_endpoint: str | None,
    service_account_info: Mapping[str, Any] | None,
) -> bigquery.Client:
    """A client for ``project``; anonymous only against an explicit endpoint (emulators)."""
    credentials: Credentials
    if service_account_info is not None:
        try:
            credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                dict(service_account_info), scopes=_SCOPES
            )
        except (ValueError, KeyError) as exc:
            raise TerminalError(f"the service account JSON is not usable: {exc}") from None
    elif api_endpoint:
        credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    else:
        raise TerminalError("a service account JSON is required (secrets.service_account_json)")
    options = ClientOptions(api_endpoint=api_endpoint) if api_endpoint else None
    return bigquery.Client(
        project=project, credentials=credentials, location=location, client_options=options
    )


def service_account_info(raw: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, dict):
        return raw
    try:
        info = json.loads(raw)
    except ValueError:
        raise TerminalError("the service account JSON is not valid JSON") from None
    if not isinstance(info, dict):
        raise TerminalError("the service account JSON must be an object")
    return info


def api_retry(timeout_s: float) -> Retry:
    """The client's own retry of 5xx/429, capped so the engine's backoff takes over soon."""
    return bigquery.DEFAULT_RETRY.with_timeout(timeout_s)


def list_export_tables(
    client: bigquery.Client, project: str, dataset: str, retry: Retry, timeout_s: float
) -> ExportTables:
    daily: set[date] = set()
    intraday: set[date] = set()
    newest: tuple[date, str] | None = None
    # Listing a missing dataset's tables is not an error everywhere: ask for it first.
    client.get_dataset(f"{project}.{dataset}", retry=retry, timeout=timeout_s)
    for table in client.list_tables(
        f"{project}.{dataset}", retry=retry, timeout=timeout_s, page_size=1000
    ):
        name = table.table_id
        for pattern, days in ((DAILY_TABLE, daily), (INTRADAY_TABLE, intraday)):
            match = pattern.match(name)
            day = parse_suffix(match.group(1)) if match else None
            if day is not None:
                days.add(day)
                if newest is None or day > newest[0] or (day == newest[0] and days is daily):
                    newest = (day, name)
    return ExportTables(daily, intraday, newest[1] if newest else None)


def table_fields(
    client: bigquery.Client, project: str, dataset: str, table: str, retry: Retry, timeout: float
) -> dict[str, Any]:
    return schema_fields(
        client.get_table(f"{project}.{dataset}.{table}", retry=retry, timeout=timeout).schema
    )


def start_query(
    client: bigquery.Client,
    sql: str,
    *,
    event_name: str,
    start: date,
    end: date,
    intraday_days: list[date] | None,
    maximum_bytes_billed: int | None,
    timeout_s: float,
    labels: Mapping[str, str],
    retry: Retry,
) -> bigquery.QueryJob:
    params: list[Any] = [
        bigquery.ScalarQueryParameter("event_name", "STRING", event_name),
        bigquery.ScalarQueryParameter("start", "STRING", suffix(start)),
        bigquery.ScalarQueryParameter("end", "STRING", suffix(end)),
    ]
    if intraday_days is not None:
        params.append(
            bigquery.ArrayQueryParameter(
                "intraday_days", "STRING", [suffix(d) for d in intraday_days]
            )
        )
    config = bigquery.QueryJobConfig(
        query_parameters=params,
        use_legacy_sql=False,
        maximum_bytes_billed=maximum_bytes_billed,
        job_timeout_ms=int(timeout_s * 1000),
        labels=dict(labels),
        # Our own rows are deduplicated by event id, BigQuery's cache is fine to use.
        use_query_cache=True,
    )
    return client.query(sql, job_config=config, retry=retry, job_retry=None, timeout=30)


def wait_slice(job: bigquery.QueryJob, slice_s: float, retry: Retry) -> bool:
    """Wait up to ``slice_s`` for ``job``; True when it is done (raises its error)."""
    try:
        job.result(timeout=slice_s, retry=retry, job_retry=None, max_results=0)
    except concurrent.futures.TimeoutError:
        return False
    except requests.exceptions.Timeout:
        return False
    return True


def open_pages(job: bigquery.QueryJob, page_size: int, retry: Retry) -> Iterator[Any]:
    rows = job.result(page_size=page_size, retry=retry, job_retry=None, timeout=60)
    return iter(rows.pages)


def next_page(pages: Iterator[Any], *, mapped: bool = True) -> list[dict[str, Any]] | None:
    """Fetch the next page (None at the end); runs in a BigQuery thread. ``mapped=False``
    leaves the GA4 records as they are, for the worker processes to map
    (``ingestion.prepare.prepare_ga4_rows``): mapping is pure Python and would hold the
    GIL here, beside the event loop."""
    page = next(pages, None)
    if page is None:
        return None
    if not mapped:
        return [dict(row.items()) for row in page]
    return [to_row(dict(row.items())) for row in page]


def cancel_job(job: bigquery.QueryJob) -> None:
    if not job.done(timeout=5, reload=False):
        job.cancel(retry=None, timeout=5)


def classify(exc: BaseException, *, what: str) -> ConnectorError:
    """A BigQuery/auth/network error -> terminal or transient, with a message for admins."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, gexc.RetryError):
        cause = exc.cause
        return (
            classify(cause, what=what)
            if isinstance(cause, BaseException)
            else TransientError(f"BigQuery kept failing ({what}): {exc.message}")
        )
    if isinstance(exc, auth_exc.RefreshError):
        if getattr(exc, "retryable", False):
            return TransientError(f"could not obtain a Google access token: {exc}")
        return TerminalError(
            f"Google refused the service account credentials ({exc}); "
            "upload a valid key for an enabled service account"
        )
    if isinstance(exc, auth_exc.TransportError | requests.exceptions.RequestException):
        return TransientError(f"network error talking to BigQuery ({what}): {exc}")
    if isinstance(exc, auth_exc.GoogleAuthError):
        return TerminalError(f"BigQuery rejected the credentials ({what}): {exc}")
    if isinstance(exc, gexc.GoogleAPICallError):
        return _classify_api(exc, what)
    if isinstance(exc, TimeoutError | concurrent.futures.TimeoutError | OSError):
        return TransientError(f"BigQuery did not answer in time ({what})")
    return TransientError(f"unexpected error from BigQuery ({what}): {type(exc).__name__}: {exc}")


def _reasons(exc: gexc.GoogleAPICallError) -> set[str]:
    return {str(e.get("reason")) for e in (exc.errors or []) if isinstance(e, Mapping)}


def _classify_api(exc: gexc.GoogleAPICallError, what: str) -> ConnectorError:
    message = exc.message or str(exc)
    reasons = _reasons(exc)
    if reasons & _TRANSIENT_REASONS or isinstance(
        exc,
        gexc.TooManyRequests
        | gexc.InternalServerError
        | gexc.BadGateway
        | gexc.ServiceUnavailable
        | gexc.GatewayTimeout
        | gexc.DeadlineExceeded,
    ):
        return TransientError(f"BigQuery is unavailable or rate limited ({what}): {message}")
    if isinstance(exc, gexc.Unauthorized):
        return TerminalError(
            f"BigQuery rejected the credentials ({what}): {message}. "
            "Check the service account key in the source's secrets"
        )
    if isinstance(exc, gexc.Forbidden):
        return TerminalError(
            f"permission denied ({what}): {message}. The service account needs "
            "BigQuery Data Viewer on the dataset and BigQuery Job User on the project"
        )
    if isinstance(exc, gexc.NotFound):
        return TerminalError(
            f"not found ({what}): {message}. Check the project, the dataset "
            "(analytics_<property id>) and the location"
        )
    if "bytesBilledLimitExceeded" in reasons:
        return TerminalError(
            f"the query would bill more than maximum_bytes_billed ({what}): {message}"
        )
    if isinstance(exc, gexc.ClientError):
        return TerminalError(f"BigQuery rejected the request ({what}): {message}")
    return TransientError(f"BigQuery error ({what}): {message}")
