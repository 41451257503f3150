"""The HTTP API of `tutord run` (FastAPI), built by the app factory `make_app`.

Routes (JSON unless said otherwise); all but `GET /healthz` need `Authorization: Bearer
<token>` (`service.api_token`, or the file `service.api_token_file`):

- `GET /healthz`: `{"ok": true}`;
- `POST /v1/interactions`: one record, a JSON list of records or `{"records": [...]}`, each
  validated like a line of `tutord ingest` and stored with source `api`; bad items are
  reported by index and field and never cost the good ones (422 only when all are bad);
- `POST /v1/feedback`: a rating and/or correction attached to a stored interaction;
- `GET /v1/status`: production, the last cycles, data counts, job runs, leadership;
- `GET /v1/adapters`: the registry's versions and which is production;
- `POST /v1/rollback`: move production back (`daemon.adapter_serving.rollback_served`,
  actor `api`): with a model server, the target is loaded and answers first (502 when the
  server refuses or does not answer; production stays), 409 when the move cannot be made;
- `GET /v1/reports/latest`: the drift report (`?format=html` for the page);
- `GET /metrics`: Prometheus text (`daemon/service/metrics.py`);
- `GET /`: a small status page for people;
- with `model.server_url` set, the logging proxy (`daemon/service/proxy.py`):
  `POST /v1/chat/completions` and `GET /v1/models`.

The two pages a browser opens (`/` and `/v1/reports/latest`) also take the token as a
`?token=` query parameter. The interactive docs (`/docs`, `/openapi.json`) are off: they
would be routes without the token. A token file is read once, when the app is built.

It does not start a server, schedule jobs or take leadership (`daemon/service/runner.py`
does, and fills `ServiceState`), and it imports no model library, so it starts fast.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon import adapters
from daemon.adapter_serving import ServingError, rollback_served
from daemon.home import Home
from daemon.lease import LeaseHeld
from daemon.models import Cycle, ServiceJob
from daemon.service.exchange import interaction_id_for_request
from daemon.service.metrics import ServiceMetrics
from daemon.service.page import status_page
from daemon.service.proxy import make_proxy_router
from daemon.settings import Settings
from replay.db import session_scope
from replay.ingest import BatchResult, ingest_records, stored_ids
from replay.ingest_json import loads_line
from replay.models import Interaction, PreferencePair
from replay.records import Feedback, RecordError
from stages import registry

SOURCE = "api"
"""The source name of interactions posted to the API (record ids are unique within it)."""
MAX_BODY_BYTES = 64 * 1024 * 1024
RECENT_CYCLES = 5
REPORT_FILES = {"json": "report.json", "html": "report.html"}
_KINDS = {"interactions": "interaction", "preference_pairs": "preference_pair"}

M = TypeVar("M", bound=BaseModel)


@dataclass
class ServiceState:
    """What the running service tells the API: leadership and its jobs' last runs."""

    started_at: float = field(default_factory=time.time)
    leader: bool = False
    holder: str = ""
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)


class FeedbackIn(Feedback):
    """`POST /v1/feedback`: `rating` (-1, 0 or 1) and/or `correction`, optional `comment`,
    for the interaction `interaction_id`, or `request_id` (the `X-Tutord-Interaction-Id`
    header the proxy answered with)."""

    interaction_id: StrictInt | None = None
    request_id: StrictStr | None = None


class RollbackIn(BaseModel):
    """`POST /v1/rollback`: `to` is 'previous' (default), a version (3 or 'v3'), or null or
    'base' for the bare base model."""

    model_config = ConfigDict(extra="forbid")

    to: StrictInt | StrictStr | None = "previous"
    reason: StrictStr | None = Field(None, max_length=2000)


# ------------------------------------------------------------------ the token


def api_token(home: Home, settings: Settings) -> str:
    """The configured bearer token; `ValueError` saying what to set when there is none."""
    svc = settings.service
    if svc.api_token.strip():
        return svc.api_token.strip()
    if not svc.api_token_file:
        raise ValueError(
            "the HTTP API needs a bearer token: set service.api_token or "
            "service.api_token_file in tutord.toml"
        )
    path = home.root / svc.api_token_file
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"service.api_token_file: cannot read {path}: {exc}") from None
    if not token:
        raise ValueError(f"service.api_token_file: {path} is empty")
    return token


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _token_checks(
    token: str,
) -> tuple[Callable[[Request], Awaitable[None]], Callable[[Request], Awaitable[None]]]:
    """Dependencies: bearer header only; bearer header or `?token=` (pages for browsers).
    Coroutines, so FastAPI runs them on the event loop, not through a worker thread."""
    expected = token.encode("utf-8")

    def check(presented: str | None) -> None:
        if presented is None or not hmac.compare_digest(presented.encode("utf-8"), expected):
            raise HTTPException(
                401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    async def header_only(request: Request) -> None:
        check(_bearer(request))

    async def header_or_query(request: Request) -> None:
        check(_bearer(request) or request.query_params.get("token"))

    return header_only, header_or_query


# ------------------------------------------------------------------ request bodies


async def _body(request: Request) -> bytes:
    """The raw request body, read after the token check (up to `MAX_BODY_BYTES`)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"the body is over {MAX_BODY_BYTES} bytes; send less at once")
        chunks.append(chunk)
    return b"".join(chunks)


RawBody = Annotated[bytes, Depends(_body)]


def _validated(model: type[M], raw: bytes) -> M:
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise HTTPException(422, f"{where}: {msg}" if where else msg) from None


def records_of(raw: bytes) -> list[Any]:
    """The items of an interactions body: a JSON list, `{"records": [...]}` (that key
    alone), or one record."""
    try:
        body = loads_line(raw)  # as a log line is read: integers beyond 64 bits kept exact
    except RecordError as exc:
        raise HTTPException(422, f"the body is not JSON: {exc}") from None
    if isinstance(body, dict) and set(body) == {"records"}:
        body = body["records"]
        if not isinstance(body, list):
            raise HTTPException(422, "records: must be a list of records")
    return body if isinstance(body, list) else [body]


# ------------------------------------------------------------------ answers


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def ingest_answer(engine: Engine, result: BatchResult) -> dict[str, Any]:
    """The response of `POST /v1/interactions`: counts, ids and each rejected item."""
    interaction_keys = [k if k and k[0] == "interactions" else None for k in result.keys]
    report = result.report
    return {
        "ingested": report.ingested,
        "duplicates": report.duplicates,
        "rejected": report.rejected,
        "ids": stored_ids(engine, interaction_keys),
        "kinds": [None if k is None else _KINDS[k[0]] for k in result.keys],
        "errors": [
            {"index": e.index, "field": e.field, "message": e.message} for e in result.errors
        ],
    }


def _cycles(session: Session, limit: int = RECENT_CYCLES) -> list[dict[str, Any]]:
    rows = session.execute(select(Cycle).order_by(Cycle.id.desc()).limit(limit)).scalars()
    return [
        {
            "id": c.id,
            "state": c.state,
            "stage": c.stage,
            "candidate": None
            if c.candidate_version is None
            else adapters.label(c.candidate_version),
            "outcome": c.outcome,
            "outcome_reason": c.outcome_reason or c.decision_reason,
            "started_at": _iso(c.started_at),
            "finished_at": _iso(c.finished_at),
            "seconds": round(sum((c.step_timings or {}).values()), 1),
        }
        for c in rows
    ]


def _grouped(session: Session, column: Any) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column).order_by(column))
    return {("(none)" if key is None else str(key)): int(n) for key, n in rows}


def _counts(session: Session) -> dict[str, Any]:
    by_source = _grouped(session, Interaction.source)
    with_feedback = session.execute(
        select(func.count()).where(
            Interaction.feedback_rating.is_not(None) | Interaction.feedback_correction.is_not(None)
        )
    ).scalar_one()
    return {
        "interactions": sum(by_source.values()),
        "interactions_with_feedback": int(with_feedback),
        "interactions_by_source": by_source,
        "interactions_by_task": _grouped(session, Interaction.task),
        "preference_pairs": int(
            session.execute(select(func.count()).select_from(PreferencePair)).scalar_one()
        ),
    }


def _jobs(session: Session) -> dict[str, dict[str, Any]]:
    rows = session.execute(select(ServiceJob).order_by(ServiceJob.name)).scalars()
    return {
        j.name: {
            "last_started": _iso(j.last_started),
            "last_finished": _iso(j.last_finished),
            "last_outcome": j.last_outcome,
            "last_message": j.last_message,
            "runs": j.runs,
        }
        for j in rows
    }


def _service(state: ServiceState | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {
        "leader": state.leader,
        "holder": state.holder,
        "started_at": _iso(datetime.fromtimestamp(state.started_at, UTC)),
        "uptime_s": round(time.time() - state.started_at, 1),
        "jobs": dict(state.jobs),
    }


def status_answer(engine: Engine, state: ServiceState | None) -> dict[str, Any]:
    """What `GET /v1/status` says (the same facts as `tutord status`, and the service's)."""
    with session_scope(engine) as session:
        prod = adapters.production(session)
        return {
            "production": adapters.label(prod),
            "production_version": prod,
            "cycles": _cycles(session),
            "data": _counts(session),
            "jobs": _jobs(session),
            "service": _service(state),
        }


def adapters_answer(engine: Engine) -> dict[str, Any]:
    """What `GET /v1/adapters` says (the same facts as `tutord adapters list`)."""
    with session_scope(engine) as session:
        prod = adapters.production(session)
        versions = [
            {
                "version": r.version,
                "name": r.name,
                "status": r.status,
                "status_reason": r.status_reason,
                "stage": r.stage,
                "parent": r.parent,
                "created_at": _iso(r.created_at),
                "production": r.version == prod,
            }
            for r in adapters.list_versions(session)
        ]
    return {"production": adapters.label(prod), "production_version": prod, "versions": versions}


def rollback_target(to: int | str | None) -> int | Literal["previous"] | None:
    """`to` of a rollback request as `daemon.adapters.rollback` takes it; 422 if unusable."""
    word = to.strip().lower() if isinstance(to, str) else None
    if to is None or word == "base":
        return None
    if word == "previous":
        return "previous"
    try:
        if isinstance(to, int):
            registry.version_name(to)
            return to
        return registry.parse_version(to)
    except registry.RegistryError as exc:
        raise HTTPException(422, f"to: {exc}") from None


def move_answer(move: adapters.Move) -> dict[str, Any]:
    return {
        "kind": move.kind,
        "from": adapters.label(move.from_version),
        "to": adapters.label(move.to_version),
        "from_version": move.from_version,
        "to_version": move.to_version,
        "actor": move.actor,
        "reason": move.reason,
        "moved_at": _iso(move.moved_at),
    }


def set_feedback(engine: Engine, body: FeedbackIn) -> dict[str, Any]:
    """Attach the feedback to its interaction; 404 when there is no such interaction."""
    try:
        with session_scope(engine) as session:
            row = session.get(Interaction, body.interaction_id)
            if row is None:
                raise HTTPException(404, f"no interaction {body.interaction_id}")
            for name in ("rating", "correction", "comment"):
                value = getattr(body, name)
                if value is not None:
                    setattr(row, f"feedback_{name}", value)
            return {
                "interaction_id": row.id,
                "rating": row.feedback_rating,
                "correction": row.feedback_correction,
                "comment": row.feedback_comment,
            }
    except DataError as exc:  # e.g. a NUL character, which PostgreSQL text cannot hold
        reason = str(exc.orig).strip().splitlines()[0]
        raise HTTPException(422, f"the database refused the feedback: {reason}") from None


# ------------------------------------------------------------------ request counting


class _CountRequests:
    """ASGI middleware: `tutord_http_requests_total{route,status}` per request."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "(unmatched)"
            self.metrics.count_request(route, status)


# ------------------------------------------------------------------ the app


def make_app(
    engine: Engine, home: Home, settings: Settings, *, state: ServiceState | None = None
) -> FastAPI:
    """The API over `engine` and `home`; `ValueError` when no token is configured."""
    token = api_token(home, settings)
    header_only, header_or_query = _token_checks(token)
    metrics = ServiceMetrics()
    app = FastAPI(title="tutord", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_CountRequests, metrics=metrics)
    app.state.metrics = metrics
    public = APIRouter()
    api = APIRouter(dependencies=[Depends(header_only)])
    pages = APIRouter(dependencies=[Depends(header_or_query)])
    reports = home.reports
    spool = home.root / settings.service.spool_dir

    @public.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @api.post("/v1/interactions")
    def post_interactions(raw: RawBody) -> JSONResponse:
        items = records_of(raw)
        result = ingest_records(
            engine,
            items,
            source=SOURCE,
            max_record_bytes=settings.ingest.max_line_bytes,
            batch_size=settings.ingest.batch_size,
        )
        all_bad = bool(items) and len(result.errors) == len(items)
        return JSONResponse(ingest_answer(engine, result), status_code=422 if all_bad else 200)

    @api.post("/v1/feedback")
    def post_feedback(raw: RawBody) -> dict[str, Any]:
        body = _validated(FeedbackIn, raw)
        if body.rating is None and body.correction is None:
            raise HTTPException(422, "give a rating (-1, 0 or 1) or a correction, or both")
        if (body.interaction_id is None) == (body.request_id is None):
            raise HTTPException(422, "give interaction_id or request_id (one of them)")
        if body.request_id is not None:
            found = interaction_id_for_request(engine, body.request_id)
            if found is None:
                raise HTTPException(404, f"no interaction for request {body.request_id}")
            body = body.model_copy(update={"interaction_id": found})
        return set_feedback(engine, body)

    @api.get("/v1/status")
    def get_status() -> dict[str, Any]:
        return status_answer(engine, state)

    @api.get("/v1/adapters")
    def get_adapters() -> dict[str, Any]:
        return adapters_answer(engine)

    @api.post("/v1/rollback")
    def post_rollback(raw: RawBody) -> dict[str, Any]:
        body = _validated(RollbackIn, raw)
        target = rollback_target(body.to)
        try:
            move = rollback_served(
                engine, home, settings, to=target, actor="api", reason=body.reason
            )
        except ServingError as exc:  # the model server failed us, not the request
            raise HTTPException(502, str(exc)) from None
        except (adapters.AdapterStateError, registry.RegistryError, LeaseHeld) as exc:
            raise HTTPException(409, str(exc)) from None
        return move_answer(move)

    @api.get("/metrics")
    def get_metrics() -> Response:
        leader = state is not None and state.leader
        return Response(metrics.scrape(engine, spool, leader), media_type=CONTENT_TYPE_LATEST)

    @pages.get("/v1/reports/latest")
    def latest_report(format: Literal["json", "html"] = "json") -> Response:
        path = reports / REPORT_FILES[format]
        if not path.is_file():
            raise HTTPException(404, "no drift report yet (a cycle or `tutord report` writes it)")
        media = "application/json" if format == "json" else "text/html; charset=utf-8"
        return Response(path.read_bytes(), media_type=media)

    @pages.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        has_report = (reports / REPORT_FILES["html"]).is_file()
        return HTMLResponse(status_page(status_answer(engine, state), token, has_report))

    for router in (public, api, pages):
        app.include_router(router)
    if settings.model.server_url:
        # The logging proxy in front of the OpenAI-compatible server (vLLM), same token.
        app.include_router(
            make_proxy_router(engine, home, settings, dependencies=[Depends(header_only)])
        )
    return app
