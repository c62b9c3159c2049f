"""Ownership of assistants, store items and crons over real HTTP, on every backend: two principals with the
same scopes never see or touch each other's objects (404 or nothing found, filtered in the query); system
assistants are everyone's; a member of the group an object is shared with sees it; admins see everything."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.app import create_app
from server.settings import ApiKey, Settings
from tests.server_support import serving

WORK = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {
    "key-ana": ApiKey("ana", WORK, ("finance",), share_with="finance"),
    "key-bob": ApiKey("bob", WORK, ("sales",)),
    "key-cara": ApiKey("cara", WORK, ("finance",)),  # sees what ana shares with finance
    "key-eve": ApiKey("ana", WORK, ("finance",), tenant="other", share_with="finance"),  # ana's name, another tenant
    "key-root": ApiKey("root", frozenset({"admin"}), ()),
}
JOURNEY = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}}
OTHERS = ("key-bob", "key-eve")


def as_(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, (response.request.url, response.status_code, response.text)
    return response.json()


@pytest.fixture
def http(store_url: str) -> Iterator[httpx.Client]:
    app = create_app(Settings(database_url=store_url, api_keys=dict(KEYS)))
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def test_assistants_are_seen_and_changed_only_by_their_owner(http: httpx.Client) -> None:
    ana = as_("key-ana")
    created = ok(
        http.post("/assistants", json={"graph_id": "structured", "name": "anas", "config": {"x": 1}}, headers=ana)
    )
    aid = created["assistant_id"]
    routes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"/assistants/{aid}", None),
        ("PATCH", f"/assistants/{aid}", {"name": "taken"}),
        ("POST", f"/assistants/{aid}/versions", {}),
        ("POST", f"/assistants/{aid}/latest", {"version": 1}),
        ("GET", f"/assistants/{aid}/schemas", None),
        ("GET", f"/assistants/{aid}/graph", None),
        ("GET", f"/assistants/{aid}/subgraphs", None),
        ("POST", "/runs/wait", {"assistant_id": aid, "input": JOURNEY}),
        ("DELETE", f"/assistants/{aid}", None),
    ]
    for key in OTHERS:
        for method, path, body in routes:
            answer = http.request(method, path, json=body, headers=as_(key))
            assert answer.status_code == 404, (key, method, path, answer.status_code, answer.text)
        found = ok(http.post("/assistants/search", json={"limit": 100}, headers=as_(key)))
        assert aid not in [a["assistant_id"] for a in found]
        assert "structured" in [a["assistant_id"] for a in found]  # system assistants are everyone's
        assert ok(http.get("/assistants/structured", headers=as_(key)))["assistant_id"] == "structured"
    bobs = ok(http.post("/assistants", json={"graph_id": "structured", "name": "bobs"}, headers=as_("key-bob")))
    mine = [a["assistant_id"] for a in ok(http.post("/assistants/search", json={"limit": 100}, headers=as_("key-bob")))]
    assert bobs["assistant_id"] in mine and aid not in mine
    assert ok(http.post("/assistants/count", json={"graph_id": "structured"}, headers=as_("key-bob"))) == 2
    assert ok(http.post("/assistants/count", json={"graph_id": "structured"}, headers=ana)) == 2  # system + hers
    # Nothing bob tried changed ana's assistant; the group she shares with and admins see it.
    assert ok(http.get(f"/assistants/{aid}", headers=ana))["name"] == "anas"
    for key in ("key-cara", "key-root"):
        assert ok(http.get(f"/assistants/{aid}", headers=as_(key)))["version"] == 1
    assert http.get(f"/assistants/{bobs['assistant_id']}", headers=ana).status_code == 404
    assert http.delete(f"/assistants/{aid}", headers=ana).status_code == 204


def test_store_items_live_in_their_owners_namespaces(http: httpx.Client) -> None:
    ana, bob = as_("key-ana"), as_("key-bob")
    http.put("/store/items", json={"namespace": ["notes"], "key": "k", "value": {"who": "ana"}}, headers=ana)
    for key in OTHERS:
        other = as_(key)
        # Namespaces first: the in-memory store lists a namespace once anything was read there.
        assert ok(http.post("/store/namespaces", json={}, headers=other)) == {"namespaces": []}
        assert ok(http.get("/store/items", params={"namespace": "notes", "key": "k"}, headers=other)) is None
        assert ok(http.post("/store/items/search", json={"namespace_prefix": ["notes"]}, headers=other)) == {
            "items": []
        }
        assert http.request(
            "DELETE", "/store/items", json={"namespace": ["notes"], "key": "k"}, headers=other
        ).is_success
    # Bob's item with the same namespace and key is his own; neither overwrites the other's.
    http.put("/store/items", json={"namespace": ["notes"], "key": "k", "value": {"who": "bob"}}, headers=bob)
    for key, who in (("key-ana", "ana"), ("key-bob", "bob"), ("key-cara", "ana")):  # cara: ana shares with finance
        item = ok(http.get("/store/items", params={"namespace": "notes", "key": "k"}, headers=as_(key)))
        assert (item["namespace"], item["value"]) == (["notes"], {"who": who}), key
        found = ok(http.post("/store/items/search", json={"namespace_prefix": ["notes"]}, headers=as_(key)))["items"]
        assert [i["value"]["who"] for i in found] == [who], key
        assert ok(http.post("/store/namespaces", json={}, headers=as_(key))) == {"namespaces": [["notes"]]}
    # An admin sees every caller's items, under their owners' prefixes.
    everything = ok(
        http.post("/store/items/search", json={"namespace_prefix": [], "limit": 100}, headers=as_("key-root"))
    )
    assert sorted(i["value"]["who"] for i in everything["items"]) == ["ana", "bob"]
    assert all(i["namespace"][0] == "owned" and i["namespace"][-1] == "notes" for i in everything["items"])
    http.request("DELETE", "/store/items", json={"namespace": ["notes"], "key": "k"}, headers=bob)
    assert ok(http.get("/store/items", params={"namespace": "notes", "key": "k"}, headers=bob)) is None
    assert ok(http.get("/store/items", params={"namespace": "notes", "key": "k"}, headers=ana))["value"] == {
        "who": "ana"
    }


def test_crons_are_seen_and_changed_only_by_their_owner(http: httpx.Client) -> None:
    ana = as_("key-ana")
    cron = ok(
        http.post(
            "/runs/crons", json={"assistant_id": "structured", "schedule": "0 9 * * *", "input": JOURNEY}, headers=ana
        )
    )
    cid = cron["cron_id"]
    thread = ok(http.post("/threads", json={}, headers=ana))["thread_id"]
    for key in OTHERS:
        other = as_(key)
        for method, path, body in (
            ("PATCH", f"/runs/crons/{cid}", {"enabled": False}),
            ("DELETE", f"/runs/crons/{cid}", None),
            ("POST", f"/threads/{thread}/runs/crons", {"assistant_id": "guide", "schedule": "0 9 * * *"}),
        ):
            answer = http.request(method, path, json=body, headers=other)
            assert answer.status_code == 404, (key, method, path, answer.status_code, answer.text)
        assert ok(http.post("/runs/crons/search", json={}, headers=other)) == []
        assert ok(http.post("/runs/crons/count", json={}, headers=other)) == 0
    bobs = ok(
        http.post(
            "/runs/crons",
            json={"assistant_id": "structured", "schedule": "0 8 * * *", "input": JOURNEY},
            headers=as_("key-bob"),
        )
    )
    assert [c["cron_id"] for c in ok(http.post("/runs/crons/search", json={}, headers=as_("key-bob")))] == [
        bobs["cron_id"]
    ]
    for key in ("key-ana", "key-cara"):
        listed = ok(http.post("/runs/crons/search", json={}, headers=as_(key)))
        assert [(c["cron_id"], c["enabled"]) for c in listed] == [(cid, True)], key
    assert ok(http.post("/runs/crons/count", json={}, headers=as_("key-root"))) == 2
    assert http.delete(f"/runs/crons/{bobs['cron_id']}", headers=ana).status_code == 404
    assert ok(http.patch(f"/runs/crons/{cid}", json={"enabled": False}, headers=ana))["enabled"] is False
