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
