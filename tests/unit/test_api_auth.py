"""Authentication and role checks of the API without services: the key lookup is a dict.

Every protected endpoint answers 401 (with ``WWW-Authenticate: Bearer``) without a valid
key and 403 when the role is too low, in the API's error shape; ``/healthz`` is open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.app import create_api
from api.auth import Authenticator, AuthError, Principal, Role
from api.keys import format_key, generate_key, hash_secret
from cohortstream.settings import Settings


class Keys:
    """An in-memory stand-in of the ``api_keys`` collection."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.lookups = 0

    def add(self, name: str, role: Role) -> str:
        parsed = generate_key()
        self.docs[parsed.key_id] = {
            "_id": parsed.key_id,
            "name": name,
            "role": role.value,
            "hash": hash_secret(parsed.secret, iterations=1000),
            "revoked_at": None,
        }
        return format_key(parsed)

    async def lookup(self, key_id: str) -> dict[str, Any] | None:
        self.lookups += 1
        doc = self.docs.get(key_id)
        return doc if doc is not None and doc["revoked_at"] is None else None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_valid_key_gives_its_principal_and_is_cached_for_the_ttl() -> None:
    keys, clock = Keys(), Clock()
    key = keys.add("dr.a", Role.ADMIN)
    auth = Authenticator(keys.lookup, cache_ttl_s=30, clock=clock)
    principal = await auth.authenticate(key)
    assert (principal.name, principal.role, principal.key_id) == ("dr.a", Role.ADMIN, key.split("_")[1])
    assert await auth.authenticate(key) == principal and keys.lookups == 1
    keys.docs[principal.key_id]["revoked_at"] = "now"
    assert await auth.authenticate(key) == principal, "revocation takes effect after the cache TTL"
    clock.now += 30
    with pytest.raises(AuthError) as caught:
        await auth.authenticate(key)
    assert caught.value.status == 401 and caught.value.headers == {"WWW-Authenticate": "Bearer"}


@pytest.mark.parametrize(
    "make",
    [
        lambda keys: None,
        lambda keys: "not-a-key",
        lambda keys: format_key(generate_key()),  # well formed, unknown
    ],
)
async def test_missing_malformed_or_unknown_keys_are_401(make: Any) -> None:
    keys = Keys()
    auth = Authenticator(keys.lookup)
    with pytest.raises(AuthError) as caught:
        await auth.authenticate(make(keys))
    assert caught.value.status == 401 and caught.value.field == "Authorization"


async def test_a_wrong_secret_with_a_known_id_is_401_and_not_cached() -> None:
    keys = Keys()
    key = keys.add("dr.a", Role.RESEARCHER)
    wrong = key[:-1] + ("B" if key[-1] != "B" else "C")
    auth = Authenticator(keys.lookup)
    for _ in range(2):
        with pytest.raises(AuthError):
            await auth.authenticate(wrong)
    assert keys.lookups == 2
    assert (await auth.authenticate(key)).role is Role.RESEARCHER


async def test_a_stored_document_with_an_unknown_role_grants_nothing() -> None:
    keys = Keys()
    key = keys.add("x", Role.ADMIN)
    next(iter(keys.docs.values()))["role"] = "superuser"
    with pytest.raises(AuthError):
        await Authenticator(keys.lookup).authenticate(key)


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
async def client(keys: Keys) -> AsyncIterator[httpx.AsyncClient]:
    app = create_api(Settings())
    app.state.authenticator = Authenticator(keys.lookup)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        yield client


PROTECTED = [
    ("GET", "/annotations"),
    ("GET", "/annotations/queue"),
    ("GET", "/annotations/x"),
    ("POST", "/annotations/x/accept"),
    ("POST", "/annotations/x/reject"),
    ("POST", "/annotations/x/correct"),
    ("GET", "/info/"),
    ("GET", "/info"),
    ("GET", "/datastore/"),
    ("POST", "/activelearning/uncertainty"),
    ("POST", "/infer/phantom-sphere-unet"),
    ("GET", "/metrics"),
    ("GET", "/proxy/dicom/qido/studies"),
    ("GET", "/proxy/dicom/wado/studies/1.2/metadata"),
    ("POST", "/proxy/dicom/stow/studies"),
    ("GET", "/ohif/app-config.js"),
]
ANNOTATOR_WORK = [
    ("POST", "/annotations/x/correct"),
    ("POST", "/activelearning/uncertainty"),
    ("POST", "/infer/phantom-sphere-unet"),
    ("POST", "/proxy/dicom/stow/studies"),
]
ADMIN_ONLY = [
    ("POST", "/annotations/x/accept"),
    ("POST", "/annotations/x/reject"),
]


def _is_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "field"} and "Traceback" not in body["error"]
    return body


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_every_endpoint_but_health_needs_a_key(client: httpx.AsyncClient, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic dTpw"}, {"X-API-Key": "x"}):
        response = await client.request(method, path, headers=headers)
        body = _is_error(response, 401)
        assert response.headers["WWW-Authenticate"] == "Bearer" and body["field"] == "Authorization"


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY + ANNOTATOR_WORK)
async def test_a_researcher_key_cannot_review_infer_or_pick_work(
    client: httpx.AsyncClient, keys: Keys, method: str, path: str
) -> None:
    key = keys.add("reader", Role.RESEARCHER)
    needed = "admin" if (method, path) in ADMIN_ONLY else "annotator"
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        body = _is_error(await client.request(method, path, headers=headers), 403)
        assert needed in body["error"]


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY)
async def test_an_annotator_key_cannot_accept_or_reject(
    client: httpx.AsyncClient, keys: Keys, method: str, path: str
) -> None:
    key = keys.add("annotator", Role.ANNOTATOR)
    assert "admin" in _is_error(await client.request(method, path, headers={"X-API-Key": key}), 403)["error"]


async def test_an_annotator_key_gets_past_authorization_of_corrections(client: httpx.AsyncClient, keys: Keys) -> None:
    key = keys.add("annotator", Role.ANNOTATOR)
    response = await client.post("/annotations/x/correct", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 422, response.text


def test_roles_are_ordered() -> None:
    assert [r.value for r in Role] == ["researcher", "annotator", "admin"]
    assert Role.ADMIN.allows(Role.ANNOTATOR) and Role.ANNOTATOR.allows(Role.RESEARCHER)
    assert not Role.ANNOTATOR.allows(Role.ADMIN) and not Role.RESEARCHER.allows(Role.ANNOTATOR)


async def test_an_admin_key_gets_past_authorization(client: httpx.AsyncClient, keys: Keys) -> None:
    key = keys.add("boss", Role.ADMIN)
    # Validation runs after authorization: a 422 naming the field shows the key was accepted.
    response = await client.post("/annotations/x/reject", json={}, headers={"Authorization": f"bearer {key}"})
    assert _is_error(response, 422)["field"] == "reason"


async def test_healthz_is_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}


def test_the_dependencies_keep_their_documented_interface() -> None:
    from api import auth

    assert {"ADMIN", "RESEARCHER", "Principal", "Role"} <= set(auth.__all__)
    assert Principal("n", Role.RESEARCHER).key_id is None
