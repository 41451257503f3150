"""The HTTP API of `tutord run` (`daemon/service/api.py`): the token on every route but
/healthz, ingest of records with per-item errors, feedback, status, adapters and rollback,
the drift report, Prometheus metrics and the status page. Database tests run on SQLite and
PostgreSQL (`db_engine`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select

from daemon import adapters
from daemon.home import Home
from daemon.models import Cycle, GateDecision
from daemon.service.api import ServiceState, make_app
from daemon.settings import Settings
from replay.db import session_scope
from replay.models import Interaction, PreferencePair
from tests.registry_support import publish_version

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def chat(question: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        **extra,
    }


PAIR = {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"}


def settings(**service: Any) -> Settings:
    return Settings(service={"api_token": TOKEN, **service})


@pytest.fixture
def state() -> ServiceState:
    return ServiceState(leader=True, holder="host:1:abc", jobs={"spool": {"outcome": "ok"}})


@pytest.fixture
def client(db_engine: Engine, home: Home, state: ServiceState) -> TestClient:
    return TestClient(make_app(db_engine, home, settings(), state=state))


@pytest.fixture
def lite(sqlite_engine: Engine, home: Home, state: ServiceState) -> TestClient:
    """The app on SQLite only, for tests that are not about the database."""
    return TestClient(make_app(sqlite_engine, home, settings(), state=state))


def add_version(engine: Engine, home: Home, parent: int | None) -> int:
    """Publish a (fake) adapter folder into the home's registry and register it."""
    base = home.root.parent / "base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    src = home.root.parent / "src"
    src.mkdir(exist_ok=True)
    (src / "adapter_config.json").write_text('{"r": 2}', encoding="utf-8")
    (src / "adapter_model.safetensors").write_bytes(b"weights")
    return publish_version(engine, home.adapters, src, base, parent)


def promote_two(engine: Engine, home: Home) -> None:
    """v1 then v2 promoted: production is v2, and v1 is one rollback away."""
    parent = None
    for _ in range(2):
        parent = add_version(engine, home, parent)
        adapters.move_production(
            engine, parent, kind="promote", actor="test", reason="gate", adapters_dir=home.adapters
        )


def production(engine: Engine) -> int | None:
    with session_scope(engine) as session:
        return adapters.production(session)


def count(engine: Engine, model: Any) -> int:
    with session_scope(engine) as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# -- the token ---------------------------------------------------------------------------------

ROUTES = [
    ("POST", "/v1/interactions", chat("1+1?", "2")),
    ("POST", "/v1/feedback", {"interaction_id": 1, "rating": 1}),
    ("GET", "/v1/status", None),
    ("GET", "/v1/adapters", None),
    ("POST", "/v1/rollback", {"to": "previous"}),
    ("GET", "/v1/reports/latest", None),
    ("GET", "/metrics", None),
    ("GET", "/", None),
]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["none", "wrong", "not-bearer"],
)
@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[r[1] for r in ROUTES])
def test_every_route_but_healthz_refuses_without_the_token(
    lite: TestClient,
    sqlite_engine: Engine,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
) -> None:
    response = lite.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert count(sqlite_engine, Interaction) == 0


@pytest.mark.parametrize("path", ["/v1/interactions", "/v1/feedback", "/v1/rollback"])
def test_the_token_is_checked_before_the_body_is_read(lite: TestClient, path: str) -> None:
    assert lite.post(path, content=b"{not json").status_code == 401
    assert lite.post(path, content=b"{not json", headers=AUTH).status_code == 422


def test_healthz_needs_no_token_and_docs_are_off(lite: TestClient) -> None:
    assert lite.get("/healthz").json() == {"ok": True}
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert lite.get(path, headers=AUTH).status_code == 404


def test_query_token_only_for_the_browser_pages(lite: TestClient, home: Home) -> None:
    assert lite.get("/v1/status", params={"token": TOKEN}).status_code == 401
    assert lite.get("/metrics", params={"token": TOKEN}).status_code == 401
    assert lite.get("/", params={"token": "nope"}).status_code == 401
    assert lite.get("/", params={"token": TOKEN}).status_code == 200
    assert lite.get("/", headers=AUTH).status_code == 200
    assert lite.get("/v1/reports/latest", params={"token": TOKEN}).status_code == 404


def test_make_app_refuses_without_a_token(sqlite_engine: Engine, home: Home) -> None:
    with pytest.raises(ValueError, match=r"service\.api_token or service\.api_token_file"):
        make_app(sqlite_engine, home, Settings())
    (home.root / "empty").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="is empty"):
        make_app(sqlite_engine, home, Settings(service={"api_token_file": "empty"}))
    with pytest.raises(ValueError, match="cannot read"):
        make_app(sqlite_engine, home, Settings(service={"api_token_file": "missing"}))


def test_token_from_a_file_relative_to_the_home(sqlite_engine: Engine, home: Home) -> None:
    (home.root / "token").write_text("from-the-file\n", encoding="utf-8")
    app = make_app(sqlite_engine, home, Settings(service={"api_token_file": "token"}))
    client = TestClient(app)
    assert client.get("/v1/status", headers={"Authorization": "Bearer from-the-file"}).is_success
    assert client.get("/v1/status", headers=AUTH).status_code == 401


# -- interactions ------------------------------------------------------------------------------


def test_a_batch_keeps_the_good_items_and_reports_each_bad_one(
    client: TestClient, db_engine: Engine
) -> None:
    first = chat("1+1?", "2", task="add")
    records = [
        first,
        {"messages": []},
        PAIR,
        "not an object",
        {"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        first,
        chat("2+3?", "5", feedback={"rating": 5}),
    ]
    response = client.post("/v1/interactions", json={"records": records}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert (body["ingested"], body["duplicates"], body["rejected"]) == (2, 1, 4)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (1, "messages"),
        (3, None),
        (4, "messages[0].role"),
        (6, "feedback.rating"),
    ]
    assert "empty" in body["errors"][0]["message"]
    assert body["kinds"] == [
        "interaction",
        None,
        "preference_pair",
        None,
        None,
        "interaction",
        None,
    ]
    with session_scope(db_engine) as session:
        row = session.execute(select(Interaction)).scalar_one()
        assert (row.source, row.task) == ("api", "add")
        pair = session.execute(select(PreferencePair)).scalar_one()
        assert pair.source == "api"
    assert body["ids"] == [row.id, None, None, None, None, row.id, None]


def test_a_single_record_and_a_list_and_duplicates(client: TestClient, db_engine: Engine) -> None:
    one = client.post("/v1/interactions", json=chat("1+1?", "2", id="log-7"), headers=AUTH)
    assert one.status_code == 200
    assert (one.json()["ingested"], one.json()["errors"]) == (1, [])
    (stored,) = one.json()["ids"]
    with session_scope(db_engine) as session:
        assert session.get(Interaction, stored).record_key == "id:api:log-7"  # type: ignore[union-attr]
    again = client.post(
        "/v1/interactions", json=[chat("1+1?", "2", id="log-7"), chat("3+3?", "6")], headers=AUTH
    ).json()
    assert (again["ingested"], again["duplicates"]) == (1, 1)
    assert again["ids"][0] == stored
    assert isinstance(again["ids"][1], int) and again["ids"][1] != stored
    assert count(db_engine, Interaction) == 2


def test_integers_beyond_64_bits_keep_their_value(client: TestClient, db_engine: Engine) -> None:
    """Over HTTP as in a log file: an integer no 64-bit reader can hold is stored as its
    exact digits (`replay/ingest_json.py`), never rounded to a float."""
    question = (
        '"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]'
    )
    body = "{" + question + f', "metadata": {{"n": {2**70}, "m": 7}}}}'
    answer = client.post(
        "/v1/interactions", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    (stored,) = answer.json()["ids"]
    with session_scope(db_engine) as session:
        assert session.get(Interaction, stored).meta == {"n": str(2**70), "m": 7}  # type: ignore[union-attr]


def test_every_item_bad_is_422_and_stores_nothing(client: TestClient, db_engine: Engine) -> None:
    response = client.post("/v1/interactions", json=[{"messages": []}, 3], headers=AUTH)
    assert response.status_code == 422
    assert response.json()["rejected"] == 2
    assert [e["index"] for e in response.json()["errors"]] == [0, 1]
    single = client.post("/v1/interactions", json={"nothing": "here"}, headers=AUTH)
    assert single.status_code == 422
    assert "unrecognized record" in single.json()["errors"][0]["message"]
    assert count(db_engine, Interaction) == 0


def test_unusable_bodies_are_422(lite: TestClient) -> None:
    not_json = lite.post("/v1/interactions", content=b"{nope", headers=AUTH)
    assert not_json.status_code == 422
    assert "not JSON" in not_json.json()["detail"]
    wrong = lite.post("/v1/interactions", json={"records": {"a": 1}}, headers=AUTH)
    assert wrong.status_code == 422
    assert wrong.json()["detail"].startswith("records:")


def test_an_oversized_record_is_rejected_by_itself(sqlite_engine: Engine, home: Home) -> None:
    small = Settings(service={"api_token": TOKEN}, ingest={"max_line_bytes": 200})
    app = make_app(sqlite_engine, home, small)
    body = [chat("1+1?", "2"), chat("x" * 300, "y")]
    answer = TestClient(app).post("/v1/interactions", json=body, headers=AUTH).json()
    assert answer["ingested"] == 1
    assert answer["errors"] == [
        {"index": 1, "field": None, "message": "record is longer than 200 bytes"}
    ]


# -- feedback ----------------------------------------------------------------------------------


def test_feedback_attaches_to_the_interaction(client: TestClient, db_engine: Engine) -> None:
    (iid,) = client.post("/v1/interactions", json=chat("2+2?", "5"), headers=AUTH).json()["ids"]
    response = client.post(
        "/v1/feedback",
        json={"interaction_id": iid, "rating": -1, "correction": "4"},
        headers=AUTH,
    )
    assert response.status_code == 200
    assert response.json()["rating"] == -1
    # a later rating alone keeps the correction
    assert client.post(
        "/v1/feedback", json={"interaction_id": iid, "rating": 1}, headers=AUTH
    ).is_success
    with session_scope(db_engine) as session:
        row = session.get(Interaction, iid)
        assert row is not None
        assert (row.feedback_rating, row.feedback_correction) == (1, "4")


def test_feedback_refusals(client: TestClient, db_engine: Engine) -> None:
    (iid,) = client.post("/v1/interactions", json=chat("2+2?", "4"), headers=AUTH).json()["ids"]
    unknown = client.post(
        "/v1/feedback", json={"interaction_id": iid + 99, "rating": 1}, headers=AUTH
    )
    assert unknown.status_code == 404
    cases = [
        {"interaction_id": iid},
        {"interaction_id": iid, "rating": 2},
        {"interaction_id": iid, "rating": True},
        {"interaction_id": iid, "correction": ""},
        {"interaction_id": str(iid), "rating": 1},
        {"interaction_id": iid, "rating": 1, "stars": 5},
    ]
    for body in cases:
        response = client.post("/v1/feedback", json=body, headers=AUTH)
        assert response.status_code == 422, body
    assert "rating" in client.post("/v1/feedback", json=cases[1], headers=AUTH).json()["detail"]
    with session_scope(db_engine) as session:
        row = session.get(Interaction, iid)
        assert row is not None
        assert (row.feedback_rating, row.feedback_correction) == (None, None)


def test_feedback_the_database_cannot_hold_is_422_not_500(
    client: TestClient, db_engine: Engine
) -> None:
    (iid,) = client.post("/v1/interactions", json=chat("2+2?", "4"), headers=AUTH).json()["ids"]
    response = client.post(
        "/v1/feedback", json={"interaction_id": iid, "correction": "a\x00b"}, headers=AUTH
    )
    expected = 422 if db_engine.dialect.name == "postgresql" else 200
    assert response.status_code == expected


# -- adapters, rollback, status ----------------------------------------------------------------


def test_rollback_moves_production(client: TestClient, db_engine: Engine, home: Home) -> None:
    promote_two(db_engine, home)
    listed = client.get("/v1/adapters", headers=AUTH).json()
    assert listed["production"] == "v2"
    assert [(v["name"], v["parent"], v["production"]) for v in listed["versions"]] == [
        ("v1", None, False),
        ("v2", 1, True),
    ]
    response = client.post("/v1/rollback", json={"reason": "bad answers"}, headers=AUTH)
    assert response.status_code == 200
    assert (response.json()["from"], response.json()["to"]) == ("v2", "v1")
    assert production(db_engine) == 1
    with session_scope(db_engine) as session:
        last = adapters.history(session)[-1]
    assert (last.kind, last.actor, last.reason) == ("rollback", "api", "bad answers")
    assert client.post("/v1/rollback", json={"to": "v2"}, headers=AUTH).json()["to"] == "v2"
    assert client.post("/v1/rollback", json={"to": None}, headers=AUTH).json()["to"] == "base"
    assert production(db_engine) is None


def test_rollback_refusals(client: TestClient, db_engine: Engine, home: Home) -> None:
    nothing = client.post("/v1/rollback", json={}, headers=AUTH)
    assert nothing.status_code == 409
    assert "nothing to roll back to" in nothing.json()["detail"]
    promote_two(db_engine, home)
    assert client.post("/v1/rollback", json={"to": 7}, headers=AUTH).status_code == 409
    assert client.post("/v1/rollback", json={"to": 2}, headers=AUTH).status_code == 409
    for bad in ({"to": "v0"}, {"to": 0}, {"to": "../x"}, {"to": 1.5}, {"why": "x"}):
        assert client.post("/v1/rollback", json=bad, headers=AUTH).status_code == 422, bad
    assert production(db_engine) == 2


def test_status(client: TestClient, db_engine: Engine, home: Home) -> None:
    client.post("/v1/interactions", json=[chat("1+1?", "2", task="add"), PAIR], headers=AUTH)
    promote_two(db_engine, home)
    with session_scope(db_engine) as session:
        for _ in range(7):
            session.add(Cycle(state="done", stage="sft", outcome="promoted", outcome_reason="ok"))
    status = client.get("/v1/status", headers=AUTH).json()
    assert (status["production"], status["production_version"]) == ("v2", 2)
    assert [c["id"] for c in status["cycles"]] == [7, 6, 5, 4, 3]
    assert status["cycles"][0]["outcome"] == "promoted"
    assert status["data"]["interactions_by_source"] == {"api": 1}
    assert status["data"]["interactions_by_task"] == {"add": 1}
    assert status["data"]["preference_pairs"] == 1
    assert status["service"]["leader"] is True
    assert status["service"]["holder"] == "host:1:abc"
    assert status["service"]["jobs"] == {"spool": {"outcome": "ok"}}


def test_status_without_a_service_state(sqlite_engine: Engine, home: Home) -> None:
    client = TestClient(make_app(sqlite_engine, home, settings()))
    status = client.get("/v1/status", headers=AUTH).json()
    assert (status["production"], status["service"], status["cycles"]) == ("base", None, [])


# -- the drift report and the page -------------------------------------------------------------


def test_latest_report(lite: TestClient, home: Home) -> None:
    assert lite.get("/v1/reports/latest", headers=AUTH).status_code == 404
    assert lite.get("/v1/reports/latest?format=html", headers=AUTH).status_code == 404
    (home.reports / "report.json").write_text('{"snapshots": []}', encoding="utf-8")
    (home.reports / "report.html").write_text("<html>drift</html>", encoding="utf-8")
    assert lite.get("/v1/reports/latest", headers=AUTH).json() == {"snapshots": []}
    page = lite.get("/v1/reports/latest", params={"format": "html", "token": TOKEN})
    assert page.headers["content-type"].startswith("text/html")
    assert page.text == "<html>drift</html>"
    assert lite.get("/v1/reports/latest?format=pdf", headers=AUTH).status_code == 422


def test_status_page_escapes_and_links_the_report(
    lite: TestClient, sqlite_engine: Engine, home: Home
) -> None:
    with session_scope(sqlite_engine) as session:
        session.add(Cycle(state="failed", outcome="failed", outcome_reason="<script>x</script>"))
    page = lite.get("/", headers=AUTH)
    assert page.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;x&lt;/script&gt;" in page.text
    assert "<script>" not in page.text
    assert "no drift report yet" in page.text
    (home.reports / "report.html").write_text("<html></html>", encoding="utf-8")
    linked = lite.get("/", params={"token": TOKEN}).text
    assert f"/v1/reports/latest?format=html&amp;token={TOKEN}" in linked


# -- metrics -----------------------------------------------------------------------------------


def test_metrics(client: TestClient, db_engine: Engine, home: Home) -> None:
    client.post("/v1/interactions", json=[chat("1+1?", "2"), chat("1+2?", "3"), PAIR], headers=AUTH)
    client.get("/v1/status")  # a 401, counted too
    promote_two(db_engine, home)
    with session_scope(db_engine) as session:
        cycle = Cycle(state="done", outcome="promoted", step_timings={"train": 2.5, "gate": 1.0})
        session.add_all([cycle, Cycle(state="skipped", outcome="skipped"), Cycle()])
        session.flush()
        cycle.finished_at = cycle.started_at
        task = {"candidate": 0.75, "production": 0.5, "missing": None}
        session.add(
            GateDecision(
                cycle_id=cycle.id,
                candidate_version=2,
                production_version=1,
                passed=True,
                reason="ok",
                tasks={"add": task, "mul": {"candidate": 0.0, "missing": "no items"}},
            )
        )
    spool = home.root / "spool"
    (spool / "waiting.jsonl").write_text("{}\n")
    (spool / ".being-written.jsonl").write_text("{}\n")
    (spool / "done").mkdir()
    (spool / "done" / "old.jsonl").write_text("{}\n")
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = metric_values(response.text)
    expected = {
        ("tutord_production_version", ()): 2,
        ("tutord_promotions", ()): 2,
        ("tutord_rollbacks", ()): 0,
        ("tutord_interactions", (("source", "api"),)): 2,
        ("tutord_preference_pairs", ()): 1,
        ("tutord_spool_backlog_files", ()): 1,
        ("tutord_leader", ()): 1,
        ("tutord_cycles", (("outcome", "promoted"),)): 1,
        ("tutord_cycles", (("outcome", "skipped"),)): 1,
        ("tutord_cycles", (("outcome", "none"),)): 1,
        ("tutord_last_cycle_duration_seconds", ()): 3.5,
        ("tutord_gate_score", (("task", "add"),)): 0.75,
        ("tutord_http_requests_total", (("route", "/v1/interactions"), ("status", "200"))): 1,
        ("tutord_http_requests_total", (("route", "/v1/status"), ("status", "401"))): 1,
    }
    assert {k: values.get(k) for k in expected} == expected
    assert ("tutord_gate_score", (("task", "mul"),)) not in values
    assert values[("tutord_last_successful_cycle_timestamp_seconds", ())] > 1.7e9


def test_metrics_of_the_bare_base_and_a_rollback(
    client: TestClient, db_engine: Engine, home: Home
) -> None:
    values = metric_values(client.get("/metrics", headers=AUTH).text)
    assert values[("tutord_production_version", ())] == -1
    assert values[("tutord_last_successful_cycle_timestamp_seconds", ())] == 0
    promote_two(db_engine, home)
    client.post("/v1/rollback", json={}, headers=AUTH)
    values = metric_values(client.get("/metrics", headers=AUTH).text)
    assert values[("tutord_production_version", ())] == 1
    assert values[("tutord_rollbacks", ())] == 1


def test_two_apps_in_one_process_keep_their_own_metrics(sqlite_engine: Engine, home: Home) -> None:
    one = TestClient(make_app(sqlite_engine, home, settings()))
    two = TestClient(make_app(sqlite_engine, home, settings()))
    one.get("/healthz")
    one.get("/healthz")
    key = ("tutord_http_requests_total", (("route", "/healthz"), ("status", "200")))
    assert metric_values(one.get("/metrics", headers=AUTH).text)[key] == 2
    assert key not in metric_values(two.get("/metrics", headers=AUTH).text)


# -- imports -----------------------------------------------------------------------------------

HEAVY = ("torch", "transformers", "vllm", "lm_eval", "trl", "peft", "world.pretrain")

SCRIPT = """
import json, sys
from pathlib import Path
from daemon.home import Home
from daemon.service.api import make_app
from daemon.settings import Settings
from replay.db import make_engine
engine = make_engine("sqlite://")
make_app(engine, Home(Path(sys.argv[2])), Settings(service={"api_token": "x"}))
print(json.dumps([m for m in json.loads(sys.argv[1]) if m in sys.modules]))
"""


def test_the_api_loads_no_heavy_library(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(HEAVY), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_feedback_by_the_proxys_request_id_and_the_proxy_is_behind_the_token(
    sqlite_engine: Engine, home: Home
) -> None:
    from replay.ingest import ingest_records

    record = {**chat("2+2?", "5"), "id": "req-abc"}
    assert not ingest_records(sqlite_engine, [record], source="proxy").errors
    base = home.root / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    model = {"server_url": "http://127.0.0.1:9", "base": str(base)}
    app = make_app(sqlite_engine, home, Settings(service={"api_token": TOKEN}, model=model))
    with TestClient(app) as client:
        given = client.post(
            "/v1/feedback", json={"request_id": "req-abc", "correction": "4"}, headers=AUTH
        )
        assert given.status_code == 200 and given.json()["correction"] == "4"
        missing = {"request_id": "nope", "rating": 1}
        assert client.post("/v1/feedback", json=missing, headers=AUTH).status_code == 404
        both = {"request_id": "req-abc", "interaction_id": 1, "rating": 1}
        assert client.post("/v1/feedback", json=both, headers=AUTH).status_code == 422
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert client.post("/v1/chat/completions", json=body).status_code == 401
        refused = client.post("/v1/chat/completions", json=body, headers=AUTH)
        assert refused.status_code == 502 and "127.0.0.1:9" in refused.text
