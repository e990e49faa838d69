"""Subjects, cohorts and statistics endpoints: input validation and answer shapes, no services.

Wrong input must be refused before any database access, with a 4xx naming the field;
these tests run the routers with no database at all (``services.db`` is None) to prove
it. The behaviour against real data is in tests/integration/test_api_data.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import auth, cohorts, statistics, subjects
from api.errors import install_error_handlers
from api.pagination import MAX_LIMIT
from cohortstream.settings import Settings


def _app() -> FastAPI:
    app = FastAPI()
    app.state.services = SimpleNamespace(db=None, settings=Settings())
    install_error_handlers(app)
    for module in (subjects, cohorts, statistics):
        app.include_router(module.router)
    if hasattr(auth, "authenticated"):
        app.dependency_overrides[auth.authenticated] = lambda: auth.Principal(
            name="t", role=auth.Role.RESEARCHER, key_id="k"
        )
    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(_app())


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (f"/subjects?limit={MAX_LIMIT + 1}", "limit"),
        ("/subjects?limit=0", "limit"),
        ("/subjects?sex=X", "sex"),
        ("/subjects?source=pacs", "source"),
        ("/subjects?has_questionnaire=perhaps", "has_questionnaire"),
        ("/subjects?cursor=not-a-cursor", "cursor"),
        ("/subjects/S1/timeline?limit=100000", "limit"),
        ("/subjects/S1/timeline?after=yesterday", "after"),
        ("/subjects/S1/timeline?after=2024-01-01T00:00:00", "after"),
    ],
)
def test_bad_query_parameters_answer_422_naming_the_field(client: TestClient, path: str, field: str) -> None:
    response = client.get(path)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"modalities": ["MR"], "modality": "CT"}, "modality"),
        ({"labs": [{"code": "50912"}]}, "labs.0"),
        ({"labs": [{"code": "50912", "min": 2, "max": 1}]}, "labs.0"),
        ({"questionnaires": [{"instrument": "baseline", "status": "DONE"}]}, "questionnaires.0.status"),
        ({"diagnoses": [{"code_prefix": "I10", "extra": 1}]}, "diagnoses.0.extra"),
        ({"modalities": "MR"}, "modalities"),
    ],
)
@pytest.mark.parametrize("path", ["/cohorts/query", "/cohorts/export"])
def test_bad_cohort_queries_answer_422_naming_the_field(client: TestClient, path: str, body: dict, field: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_an_unknown_export_format_answers_422(client: TestClient) -> None:
    response = client.post("/cohorts/export?format=xlsx", json={})
    assert response.status_code == 422
    assert response.json()["field"] == "format"


def test_malformed_json_is_refused(client: TestClient) -> None:
    response = client.post("/cohorts/query", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_the_openapi_document_names_typed_responses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("SubjectPage", "SubjectDetail", "TimelinePage", "CohortAnswer", "Statistics", "CohortQuery"):
        assert name in schemas
    ok = spec["paths"]["/subjects/{subject}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/SubjectDetail")
    assert "ndjson" in str(spec["paths"]["/cohorts/export"]["post"]["responses"]["200"])
