"""Email templates: every message is plain text plus HTML, rendered from ``string.Template``.

User-controlled values (source names, error messages, tenant names) are escaped for
HTML and stripped of control characters; anything that ends up in a header goes
through :func:`one_line`, so a newline can never start a new header.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from string import Template

# Characters that break a header or a line: C0/C1 controls, DEL, Unicode line/paragraph
# separators. Tabs and newlines are kept only in multi-line plain text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_ANY_LINE_BREAK = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SPACES = re.compile(r"[ \t]+")


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str


def one_line(value: str, limit: int = 200) -> str:
    """A value safe for a header or a one-line field: no control characters, bounded length."""
    flat = _ANY_LINE_BREAK.sub(" ", unicodedata.normalize("NFC", value))
    flat = _SPACES.sub(" ", flat).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


def plain(value: str, limit: int = 4000) -> str:
    """Multi-line text without control characters (newlines kept), bounded length."""
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def escape(value: str) -> str:
    return html.escape(value, quote=True)


_HTML_LAYOUT = Template(
    """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>$title</title></head>
<body style="font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; color: #1f2933;">
<h2 style="margin: 0 0 12px 0;">$title</h2>
$content
<p style="color: #7b8794; font-size: 12px; margin-top: 24px;">
Sent by Pulse for $tenant. Change who receives these emails in the notification settings.
</p>
</body>
</html>
"""
)

_TEXT_FOOTER = Template(
    "\n--\nSent by Pulse for $tenant. Change who receives these emails in the notification"
    " settings.\n"
)


def _table(rows: list[tuple[str, str]]) -> str:
    """An HTML key/value table; both sides must already be escaped."""
    cells = "".join(
        f'<tr><th align="left" style="padding: 2px 12px 2px 0;">{k}</th>'
        f'<td style="padding: 2px 0;">{v}</td></tr>'
        for k, v in rows
    )
    return f'<table style="border-collapse: collapse;">{cells}</table>'


def layout(*, title: str, tenant: str, content_html: str, content_text: str) -> Rendered:
    """Wrap already-escaped HTML and already-cleaned text in the common frame."""
    subject = one_line(f"[Pulse] {title}", limit=250)
    return Rendered(
        subject=subject,
        text=content_text.rstrip("\n") + "\n" + _TEXT_FOOTER.substitute(tenant=one_line(tenant)),
        html=_HTML_LAYOUT.substitute(
            title=escape(one_line(title)), tenant=escape(one_line(tenant)), content=content_html
        ),
    )


# --- import alerts -----------------------------------------------------------------------

_RUN_TEXT = Template(
    """$headline

Source:    $source
Status:    $status
Attempts:  $attempts
Finished:  $finished
Run:       $link
$error_block"""
)

_RUN_HTML = Template(
    """<p>$headline</p>
$table
$error_block<p><a href="$link">Open the run in the API</a></p>
"""
)


@dataclass(frozen=True, slots=True)
class RunAlert:
    kind: str  # import_failed | import_succeeded | source_recovered
    tenant_name: str
    source_name: str
    status: str
    attempts: int
    error: str | None
    finished: str  # already formatted in the tenant's timezone
    link: str
    previous_failures: int = 0


def render_run_alert(alert: RunAlert) -> Rendered:
    source = one_line(alert.source_name)
    if alert.kind == "import_failed":
        title = f"Import failed: {source}"
        headline = (
            f"The import from {source} failed after {alert.attempts} "
            f"attempt{'s' if alert.attempts != 1 else ''}. No new data from it was loaded."
        )
    elif alert.kind == "source_recovered":
        title = f"Import recovered: {source}"
        failures = alert.previous_failures
        headline = (
            f"The import from {source} succeeded again after {failures} failed "
            f"run{'s' if failures != 1 else ''}."
        )
    else:
        title = f"Import succeeded: {source}"
        headline = f"The import from {source} finished successfully."
    error = plain(alert.error) if alert.error else ""
    link = one_line(alert.link, limit=1000)
    text = _RUN_TEXT.substitute(
        headline=headline,
        source=source,
        status=alert.status,
        attempts=alert.attempts,
        finished=alert.finished,
        link=link,
        error_block=f"\nWhat went wrong:\n{error}\n" if error else "",
    )
    rows = [
        ("Source", escape(source)),
        ("Status", escape(alert.status)),
        ("Attempts", str(alert.attempts)),
        ("Finished", escape(alert.finished)),
    ]
    error_html = (
        '<p><strong>What went wrong:</strong></p>\n<pre style="white-space: pre-wrap;">'
        f"{escape(error)}</pre>\n"
        if error
        else ""
    )
    content = _RUN_HTML.substitute(
        headline=escape(headline), table=_table(rows), error_block=error_html, link=escape(link)
    )
    return layout(title=title, tenant=alert.tenant_name, content_html=content, content_text=text)


def render_test_email(*, tenant_name: str, requested_by: str | None) -> Rendered:
    who = one_line(requested_by) if requested_by else "an administrator"
    text = (
        f"This is a test email from Pulse, requested by {who}.\n"
        "If you can read it, notifications for this tenant reach you.\n"
    )
    content = (
        f"<p>This is a test email from Pulse, requested by {escape(who)}.</p>\n"
        "<p>If you can read it, notifications for this tenant reach you.</p>\n"
    )
    return layout(title="Test email", tenant=tenant_name, content_html=content, content_text=text)


# --- weekly digest -----------------------------------------------------------------------

MetricValue = float | int | None

_DIGEST_LABELS = {
    "users": "Users",
    "sessions": "Sessions",
    "pageviews": "Pageviews",
    "conversions": "Conversions",
    "revenue": "Revenue",
}


@dataclass(frozen=True, slots=True)
class DigestView:
    tenant_name: str
    first_day: date
    last_day: date
    current: dict[str, MetricValue]
    previous: dict[str, MetricValue]
    change: dict[str, MetricValue]  # relative: 0.25 = +25 %
    top_pages: list[tuple[str, float | int]]
    top_sources: list[tuple[str, float | int]]
    # Metrics that are estimates, with their relative error bound (0.01 = 1 %) if known.
    approximate: dict[str, float | None]


def format_metric(metric: str, value: MetricValue) -> str:
    if value is None:
        return "-"
    if metric == "revenue":
        return f"{value:,.2f}"
    return f"{round(value):,}"


def format_change(current: MetricValue, previous: MetricValue, change: MetricValue) -> str:
    if change is not None:
        return f"{change * 100:+.1f}%"
    if previous in (None, 0) and current:
        return "new"
    return "-"


def render_digest(view: DigestView) -> Rendered:
    period = f"{view.first_day:%a %d %b %Y} to {view.last_day:%a %d %b %Y}"
    days = f"{view.first_day:%d %b} to {view.last_day:%d %b %Y}"
    title = f"Weekly digest: {one_line(view.tenant_name)}, {days}"
    rows = [
        (
            _DIGEST_LABELS[m],
            format_metric(m, view.current.get(m)),
            format_metric(m, view.previous.get(m)),
            format_change(view.current.get(m), view.previous.get(m), view.change.get(m)),
        )
        for m in _DIGEST_LABELS
    ]
    pages = [
        (one_line(p, 120) or "(not set)", format_metric("pageviews", v)) for p, v in view.top_pages
    ]
    sources = [
        (one_line(s, 120) or "(not set)", format_metric("sessions", v)) for s, v in view.top_sources
    ]
    note = ""
    estimated = [label for m, label in _DIGEST_LABELS.items() if m in view.approximate]
    if estimated:
        names = " and ".join(
            [", ".join(estimated[:-1]), estimated[-1]] if len(estimated) > 1 else estimated
        )
        bounds = [e for e in view.approximate.values() if e is not None]
        within = f", within {max(bounds) * 100:.1f}%" if bounds else ""
        note = f"{names} are estimates (distinct counts from sketches{within})."

    text_lines = [f"Your week in numbers, {period}, compared with the 7 days before.", ""]
    text_lines.append(f"{'':<13}{'This week':>14}{'Week before':>14}{'Change':>10}")
    text_lines += [f"{label:<13}{cur:>14}{prev:>14}{chg:>10}" for label, cur, prev, chg in rows]
    for heading, items, unit in (
        ("Top pages", pages, "pageviews"),
        ("Top sources", sources, "sessions"),
    ):
        text_lines += ["", f"{heading} ({unit}):"]
        text_lines += [f"  {value:>10}  {name}" for name, value in items] or ["  no data"]
    if note:
        text_lines += ["", note]

    head = "".join(
        f'<th align="{a}" style="padding: 4px 10px;">{h}</th>'
        for h, a in (
            ("", "left"),
            ("This week", "right"),
            ("Week before", "right"),
            ("Change", "right"),
        )
    )
    body = "".join(
        f'<tr><th align="left" style="padding: 4px 10px;">{escape(label)}</th>'
        + "".join(
            f'<td align="right" style="padding: 4px 10px;">{escape(v)}</td>'
            for v in (cur, prev, chg)
        )
        + "</tr>"
        for label, cur, prev, chg in rows
    )
    html_parts = [
        f"<p>Your week in numbers, {escape(period)}, compared with the 7 days before.</p>",
        f'<table style="border-collapse: collapse;"><tr>{head}</tr>{body}</table>',
    ]
    for heading, items, unit in (
        ("Top pages", pages, "pageviews"),
        ("Top sources", sources, "sessions"),
    ):
        html_parts.append(f"<h3>{heading} <small>({unit})</small></h3>")
        if items:
            html_parts.append(_table([(escape(v), escape(name)) for name, v in items]))
        else:
            html_parts.append("<p>No data.</p>")
    if note:
        html_parts.append(f'<p style="color: #7b8794;">{escape(note)}</p>')
    return layout(
        title=title,
        tenant=view.tenant_name,
        content_html="\n".join(html_parts) + "\n",
        content_text="\n".join(text_lines) + "\n",
    )
