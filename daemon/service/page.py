"""The status page of `tutord run` for people (`GET /` of the HTTP API): production, this
process's role, data counts, the last cycles and a link to the drift report, as one small
HTML document with every value escaped and no script.

It does not query anything: `daemon/service/api.py` passes what `GET /v1/status` answers.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote


def _cell(value: Any) -> str:
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


def status_page(answer: dict[str, Any], token: str, has_report: bool) -> str:
    """The HTML status page: production, leadership, the last cycles, the drift report."""
    head = ("id", "state", "stage", "candidate", "outcome", "reason", "started", "finished")
    keys = ("id", "state", "stage", "candidate", "outcome", "outcome_reason")
    rows = "".join(
        "<tr>" + "".join(_cell(c[k]) for k in (*keys, "started_at", "finished_at")) + "</tr>"
        for c in answer["cycles"]
    )
    service = answer["service"]
    role = "" if service is None else ("leader" if service["leader"] else "follower")
    report = (
        f'<a href="{html.escape("/v1/reports/latest?format=html&token=" + quote(token, safe=""))}">'
        "drift report</a>"
        if has_report
        else "no drift report yet"
    )
    data = answer["data"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='referrer' content='no-referrer'><title>tutord</title></head><body>"
        "<h1>tutord</h1>"
        f"<p>production adapter: <b>{html.escape(answer['production'])}</b>"
        f"{' (' + html.escape(role) + ')' if role else ''}</p>"
        f"<p>interactions: {int(data['interactions'])}; preference pairs: "
        f"{int(data['preference_pairs'])}</p>"
        f"<p>{report}</p><h2>last cycles</h2><table border='1'><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + f"</tr>{rows}</table></body></html>"
    )
