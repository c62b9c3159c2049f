"""Object-level authorization over real HTTP: two principals with the same scopes, each on every route,
never see or touch the other's threads, runs, journeys, process instances or tasks (404, as the Agent
Server answers, not 403); a user id naming someone else needs the ``impersonate`` scope; an object
shared with a group is seen by its members; admins see everything; search filters in the database."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from checkpoints.ownership import Owner, Viewer, acting_as
from graphs import READY_TO_START, JourneyRuntime
from graphs.structured.orchestrator import structured_instance_id
from server.app import create_app
from server.auth import OwnerRules, Principal
from server.problems import ApiError
from server.settings import ApiKey, Settings
from tests.forked import run_journeys
from tests.server_support import APPROVAL_PROCESS, journeys_serve, on_server_loop, serving

WORK = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {
    "key-ana": ApiKey("ana", WORK, ("finance",), share_with="finance"),
    "key-bob": ApiKey("bob", WORK, ("sales",)),
    "key-cara": ApiKey("cara", WORK, ("finance",)),  # sees what ana shares with finance
    "key-eve": ApiKey("ana", WORK, ("finance",), tenant="other"),  # ana's name, another tenant
    "key-ops": ApiKey("ops", WORK | {"impersonate"}, ()),
    "key-root": ApiKey("root", frozenset({"admin"}), ()),
}


def as_(key: str) -> dict[str, str]:
    return {"x-api-key": key}


@pytest.fixture
def base(durable_url: str) -> Iterator[str]:
    with serving(create_app(Settings(database_url=durable_url, api_keys=dict(KEYS)))) as url:
        yield url


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, (response.request.url, response.status_code, response.text)
    return response.json()


def anas_objects(http: httpx.Client) -> dict[str, str]:
    """One object of every kind, created by ana."""
    ana = as_("key-ana")
    thread = ok(http.post("/threads", json={"metadata": {"team": "x"}}, headers=ana))["thread_id"]
    design = ok(http.post("/journeys/structured/designs", json={"journey_type": "content_migration"}, headers=ana))
    run = ok(
        http.post(
            f"/threads/{thread}/runs/wait",
            json={"assistant_id": "structured", "input": {"journey_type": "content_migration"}},
            headers=ana,
        )
    )
    assert run["current_step"] == "upload_content"
    [run_id] = [r["run_id"] for r in ok(http.get(f"/threads/{thread}/runs", headers=ana))]
    bound = ok(http.get(f"/threads/{thread}", headers=ana))["metadata"]["instance_id"]
    journey = design["journey_id"]
    ok(http.post(f"/journeys/structured/{journey}/executions", json={"user_id": "ana"}, headers=ana))
    saga_design = ok(
        http.post(
            "/journeys/sagas/designs",
            json={"journey_type": "enterprise_migration", "compensation_handlers": {}},
            headers=ana,
        )
    )
    saga = ok(
        http.post(
            f"/journeys/sagas/designs/{saga_design['journey_id']}/executions", json={"user_id": "ana"}, headers=ana
        )
    )
    mvp = ok(http.post("/journeys/mvp", json={"user_id": "ana"}, headers=ana))
    areas = {"areas": [{"area_id": "a"}, {"area_id": "b"}]}
    session = ok(http.post("/journeys/sessions", json={"user_id": "ana", "session_config": areas}, headers=ana))
    lifecycle = ok(http.post("/journeys/lifecycle", json={"client_id": "c1", "metrics": READY_TO_START}, headers=ana))
    ok(http.post("/processes", json=APPROVAL_PROCESS, headers=ana))
    process = ok(http.post("/processes/approval/instances", json={"business_key": "b1"}, headers=ana))
    [task] = ok(http.get("/tasks", params={"instance_id": process["instance_id"]}, headers=ana))
    return {
        "thread": thread,
        "run": run_id,
        "bound": bound,  # the journey the thread's run started (owned by the run's creator)
        "journey": journey,
        "structured": f"{journey}:ana",
        "saga": saga["saga_id"],
        "saga_design": saga_design["journey_id"],
        "session": session["session_id"],
        "mvp": mvp["session"]["session_id"],
        "lifecycle": str(lifecycle["journey_id"]),
        "process": process["instance_id"],
        "task": task["task_id"],
    }


def every_route(o: dict[str, str], who: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Each route that reads or acts on one of ana's objects, with a body it would accept from ana."""
    t, r, s, m = o["thread"], o["run"], o["session"], o["mvp"]
    run = {"assistant_id": "structured", "command": {"resume": {"files": 1}}}
    return [
        ("GET", f"/threads/{t}", None),
        ("GET", f"/threads/{t}/state", None),
        ("POST", f"/threads/{t}/state", {"values": {}}),
        ("POST", f"/threads/{t}/history", {}),
        ("POST", f"/threads/{t}/runs", run),
        ("POST", f"/threads/{t}/runs/wait", run),
        ("POST", f"/threads/{t}/runs/stream", run),
        ("GET", f"/threads/{t}/runs", None),
        ("GET", f"/threads/{t}/runs/{r}", None),
        ("GET", f"/threads/{t}/runs/{r}/join", None),
        ("GET", f"/threads/{t}/runs/{r}/stream", None),
        ("POST", f"/threads/{t}/runs/{r}/cancel", None),
        ("GET", f"/threads/{o['structured']}", None),  # a journey is a thread too
        ("POST", f"/threads/{o['structured']}/runs", run),
        ("POST", f"/journeys/sagas/{o['saga']}/advance", {"journey_id": o["saga_design"], "user_id": who}),
        ("POST", f"/journeys/sagas/{o['saga']}/retry", None),
        ("GET", f"/journeys/sagas/{o['saga']}", None),
        ("POST", f"/journeys/sessions/{s}/navigate", {"area_id": "b"}),
        ("POST", f"/journeys/sessions/{s}/updates", {"area_id": "a", "updates": {"x": 1}}),
        ("POST", f"/journeys/sessions/{s}/close", {}),
        ("GET", f"/journeys/sessions/{s}", None),
        ("POST", f"/journeys/mvp/{m}/navigate", {"area_id": "insights"}),
        ("POST", f"/journeys/mvp/{m}/progress", {"area_id": "content", "updates": {"files_uploaded": True}}),
        ("GET", f"/journeys/mvp/{m}/recommendation", None),
        ("GET", f"/journeys/mvp/{m}/completion", None),
        ("POST", f"/journeys/lifecycle/{o['lifecycle']}/transitions", {"event": "cancel_journey"}),
        ("POST", f"/journeys/lifecycle/{o['lifecycle']}/metrics", {"values": {"search_precision": 0.9}}),
        ("GET", f"/journeys/lifecycle/{o['lifecycle']}", None),
        ("GET", f"/journeys/{o['structured']}/status", None),
        ("GET", f"/journeys/{o['bound']}/status", None),
        ("GET", f"/journeys/{o['structured']}/history", None),
        ("GET", f"/journeys/{o['process']}/status", None),
        ("GET", f"/processes/instances/{o['process']}", None),
        ("GET", f"/tasks?instance_id={o['process']}", None),
    ]


def test_two_principals_never_see_or_touch_each_others_objects(base: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as http:
        objects = anas_objects(http)
        bob = as_("key-bob")
        for other, who in ((bob, "bob"), (as_("key-eve"), "ana")):  # another principal; ana in another tenant
            for method, path, body in every_route(objects, who):
                answer = http.request(method, path, json=body, headers=other)
                assert answer.status_code == 404, (method, path, answer.status_code, answer.text)
        # Structured journeys named by design and user: bob may not name ana, and has no journey of his own.
        structured = f"/journeys/structured/{objects['journey']}/users"
        for method, path in (("GET", "ana"), ("POST", "ana/advance"), ("POST", "ana/retry")):
            body = {"step_result": {}} if path.endswith("advance") else None
            answer = http.request(method, f"{structured}/{path}", json=body, headers=bob)
            assert answer.status_code == 403 and answer.json()["type"].endswith("ImpersonationError"), answer.text
        assert http.get(f"{structured}/bob", headers=bob).status_code == 404
        # A design is its saver's tenant's: the other tenant's ana cannot start ana's design (as if none were
        # stored), nor reach ana's journey of it by design and user (people are named per tenant: a shared design's
        # journey of hers is her own, see the upgrade test below).
        eve, design = as_("key-eve"), objects["journey"]
        refused = http.post(f"/journeys/structured/{design}/executions", json={"user_id": "ana"}, headers=eve)
        assert refused.status_code == 404 and refused.json()["code"] == "JourneyNotFoundError", refused.text
        assert http.get(f"{structured}/ana", headers=eve).status_code == 404
        # Nor does a thread take the id a user's journey of a design will have: made first, it hid that journey's
        # thread from its user (404).
        run_on_new = {
            "assistant_id": "structured",
            "input": {"journey_type": "content_migration"},
            "if_not_exists": "create",
        }
        for path, body in (("/threads", {"thread_id": f"{design}:cara"}), (f"/threads/{design}:cara/runs", run_on_new)):
            answer = http.post(path, json=body, headers=bob)
            assert answer.status_code == 409 and answer.json()["code"] == "ThreadExists", (path, answer.text)
        # Nothing of ana's in bob's searches and inboxes; his own thread is found, by the same query.
        mine = ok(http.post("/threads", json={"metadata": {"team": "x"}}, headers=bob))["thread_id"]
        found = ok(http.post("/threads/search", json={"metadata": {"team": "x"}}, headers=bob))
        assert [t["thread_id"] for t in found] == [mine]
        assert ok(http.post("/threads/search", json={"ids": [objects["thread"]]}, headers=bob)) == []
        assert http.get(f"/tasks/{objects['task']}", headers=bob).status_code == 404
        assert http.get("/tasks", params={"group": "finance"}, headers=bob).status_code == 403
        assert http.get("/tasks", params={"assignee": "ana"}, headers=bob).status_code == 403
        assert ok(http.get("/tasks", headers=bob)) == []  # his own inbox, none of ana's
        # Nothing bob tried changed ana's objects: her thread still waits at its first step, her runs are hers.
        ana = as_("key-ana")
        assert ok(http.get(f"/threads/{objects['thread']}", headers=ana))["status"] == "interrupted"
        status = ok(http.get(f"/journeys/{objects['bound']}/status", headers=ana))
        assert (status["current_step"], status["completed_steps"]) == ("upload_content", [])
        assert ok(http.get(f"{structured}/ana", headers=ana))["completed_steps"] == []
        assert ok(http.get(f"/journeys/lifecycle/{objects['lifecycle']}", headers=ana))["current_stage"] == "sandbox"
        assert len(ok(http.get(f"/threads/{objects['thread']}/runs", headers=ana))) == 1
        session = ok(http.get(f"/journeys/sessions/{objects['session']}", headers=ana))
        assert (session["status"], session["current_area"]) == ("active", "a")
        assert ok(http.get(f"/journeys/mvp/{objects['mvp']}/completion", headers=ana))["completion_percent"] == 0
        # And ana sees none of bob's.
        assert http.get(f"/threads/{mine}", headers=ana).status_code == 404
        assert [t["thread_id"] for t in ok(http.post("/threads/search", json={}, headers=ana))] == [objects["thread"]]


def test_a_tenants_structured_journey_started_before_its_id_carried_the_tenant_stays_its_users(
    store_url: str,
) -> None:
    """A journey another tenant than the default one started by design and user before 36a9e6f has the id
    ``<design>:<user>``, which the design-and-user routes no longer computed for that tenant: its user's status,
    advance and retry answered 404 and a start began a second journey. They reach it again; another tenant's
    user of the same name never does (the old id was every tenant's), and starts and moves on a journey of her
    own; so does the default tenant's, whose id that journey has."""
    keys = {**KEYS, "key-acme": ApiKey("ana", WORK, (), tenant="acme")}
    app = create_app(Settings(database_url=store_url, api_keys=keys))
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        acme, eve = as_("key-acme"), as_("key-eve")
        # A design stored before migration 32, as every one then: shared by every tenant (one saved by the runtime
        # itself is too).
        runtime = app.state.services.runtime
        design = on_server_loop(app, runtime.structured.design_journey("content_migration", {}))
        journey, legacy = f"/journeys/structured/{design['journey_id']}", f"{design['journey_id']}:ana"

        async def start_as_before_36a9e6f() -> None:  # that start's instance id, owned by its caller
            with acting_as(Owner("ana", "acme")):
                await app.state.services.runtime.structured.start_run(legacy, design["journey_id"], "ana")

        on_server_loop(app, start_as_before_36a9e6f())
        assert ok(http.get(f"{journey}/users/ana", headers=acme))["instance_id"] == legacy
        failed = ok(http.post(f"{journey}/users/ana/advance", json={"step_result": {"status": "failed"}}, headers=acme))
        assert (failed["instance_id"], failed["failed_step"]) == (legacy, "upload_content")
        assert ok(http.post(f"{journey}/users/ana/retry", headers=acme))["awaiting_input"]
        again = http.post(f"{journey}/executions", json={"user_id": "ana"}, headers=acme)
        assert again.status_code == 409 and again.json()["type"].endswith("DuplicateInstanceError"), again.text
        # The other tenant's ana: not acme's ana's journey by any route, and one of her own to start.
        assert http.get(f"{journey}/users/ana", headers=eve).status_code == 404
        assert http.post(f"{journey}/users/ana/retry", headers=eve).status_code == 404
        hers = ok(http.post(f"{journey}/executions", json={"user_id": "ana"}, headers=eve))["instance_id"]
        assert hers not in (legacy, f"{design['journey_id']}:ana")
        moved = ok(http.post(f"{journey}/users/ana/advance", json={"step_result": {"n": 1}}, headers=eve))
        assert (moved["instance_id"], moved["completed_step"]) == (hers, "upload_content")
        assert ok(http.get(f"{journey}/users/ana", headers=eve))["instance_id"] == hers
        # The default tenant's ana, whose id acme's ana's journey took: one of her own too (it was 409, naming it).
        ana = as_("key-ana")
        assert http.get(f"{journey}/users/ana", headers=ana).status_code == 404
        own = ok(http.post(f"{journey}/executions", json={"user_id": "ana"}, headers=ana))["instance_id"]
        assert own not in (legacy, hers)
        ok(http.post(f"{journey}/users/ana/advance", json={"step_result": {"n": 1}}, headers=ana))
        assert ok(http.get(f"{journey}/users/ana", headers=ana))["instance_id"] == own
        mine = ok(http.get(f"{journey}/users/ana", headers=acme))
        assert (mine["instance_id"], mine["completed_steps"]) == (legacy, [])
        # No second journey of acme's ana under the id her tenant's starts take now.
        index = app.state.services.runtime.store.index
        assert (
            on_server_loop(app, index.get_instance(structured_instance_id(design["journey_id"], "ana", "acme"))) is None
        )


def test_a_user_id_must_be_the_callers_own_unless_it_may_impersonate(base: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as http:
        bob, ops = as_("key-bob"), as_("key-ops")
        design = ok(http.post("/journeys/structured/designs", json={"journey_type": "content_migration"}, headers=bob))
        starts = [
            (f"/journeys/structured/{design['journey_id']}/executions", {"user_id": "ana"}),
            ("/journeys/mvp", {"user_id": "ana"}),
            ("/runs", {"assistant_id": "structured", "input": {"journey_type": "content_migration", "user_id": "ana"}}),
        ]
        for path, body in starts:
            answer = http.post(path, json=body, headers=bob)
            assert answer.status_code == 403 and "impersonate" in answer.json()["detail"], (path, answer.text)
        assert ok(http.post("/threads/search", json={}, headers=bob)) == []  # the refused run left no thread
        for path, body in starts[:2]:
            ok(http.post(path, json=body, headers=ops))
        # Ops started ana's structured journey: ops owns it; ana does not see it, ops does.
        journey = f"{design['journey_id']}:ana"
        assert ok(http.get(f"/journeys/{journey}/status", headers=ops))["user_id"] == "ana"
        assert http.get(f"/journeys/{journey}/status", headers=as_("key-ana")).status_code == 404


def test_shared_groups_and_admins_see_what_others_cannot(base: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as http:
        ana = as_("key-ana")
        thread = ok(http.post("/threads", json={}, headers=ana))["thread_id"]
        mvp = ok(http.post("/journeys/mvp", json={"user_id": "ana"}, headers=ana))["session"]["session_id"]
        for key, sees in (("key-cara", True), ("key-root", True), ("key-bob", False)):
            codes = {
                http.get(f"/threads/{thread}", headers=as_(key)).status_code,
                http.get(f"/journeys/mvp/{mvp}/completion", headers=as_(key)).status_code,
            }
            assert codes == ({200} if sees else {404}), key
            listed = [t["thread_id"] for t in ok(http.post("/threads/search", json={}, headers=as_(key)))]
            assert (thread in listed) is sees, key
        # A member of the shared group acts on it too.
        ok(http.post(f"/journeys/mvp/{mvp}/navigate", json={"area_id": "insights"}, headers=as_("key-cara")))


class HeaderAuth(OwnerRules):
    """A custom authenticator (as a JWT check would be): the caller and tenant from a header."""

    async def authenticate(self, request: Request) -> Principal:
        user = request.headers.get("x-user")
        if not user:
            raise ApiError(401, "Unauthenticated", "send x-user")
        return Principal(user, frozenset({"read", "runs"}), tenant=request.headers.get("x-tenant", "t1"))

    def on_create(self, principal: Principal) -> Owner:
        return Owner(principal.name, principal.tenant, "everyone" if principal.name == "pub" else None)

    def read_filter(self, principal: Principal) -> Viewer:
        return Viewer(principal.name, principal.tenant, ("everyone",))


def test_a_custom_authenticator_decides_who_calls_who_owns_and_who_sees(sqlite_url: str) -> None:
    settings = Settings(database_url=sqlite_url, authenticator=HeaderAuth())
    with serving(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert http.post("/threads", json={}).status_code == 401
        private = ok(http.post("/threads", json={}, headers={"x-user": "ann"}))["thread_id"]
        public = ok(http.post("/threads", json={}, headers={"x-user": "pub"}))["thread_id"]
        seen = {t["thread_id"] for t in ok(http.post("/threads/search", json={}, headers={"x-user": "ben"}))}
        assert seen == {public}
        assert http.get(f"/threads/{private}", headers={"x-user": "ben"}).status_code == 404
        other_tenant = {"x-user": "ann", "x-tenant": "t2"}
        assert http.get(f"/threads/{private}", headers=other_tenant).status_code == 404
        assert ok(http.get(f"/threads/{private}", headers={"x-user": "ann"}))["thread_id"] == private


def test_people_and_groups_are_named_per_tenant_in_the_inbox(base: str) -> None:
    """Eve is "ana" of another tenant, in a group also called "finance": ana's tenant's finance task is not
    offered to her, in the API's inbox or the dashboard's (404 as if it did not exist, its variables never
    shown), and the finance member of ana's tenant works on it. Both tenants' people act at once."""
    with httpx.Client(base_url=base, timeout=60) as http:
        ana, eve, cara = as_("key-ana"), as_("key-eve"), as_("key-cara")
        ok(http.post("/processes", json=APPROVAL_PROCESS, headers=ana))
        variables = {"iban": "DE00-of-ana"}
        process = ok(
            http.post("/processes/approval/instances", json={"business_key": "b1", "variables": variables}, headers=ana)
        )
        [task] = ok(http.get("/tasks", params={"instance_id": process["instance_id"]}, headers=ana))
        task_id = task["task_id"]

        def eves_tries() -> list[int]:
            return [
                len(ok(http.get("/tasks", params={"group": "finance"}, headers=eve))),
                len(ok(http.get("/tasks", params={"assignee": "ana"}, headers=eve))),
                len(ok(http.get("/tasks", headers=eve))),  # her own inbox: her tenant's tasks only
                http.get(f"/tasks/{task_id}", headers=eve).status_code,
                http.post(f"/tasks/{task_id}/claim", json={}, headers=eve).status_code,
                http.post(f"/tasks/{task_id}/complete", json={"payload": {"approved": True}}, headers=eve).status_code,
            ]

        with ThreadPoolExecutor(4) as pool:  # eve tries while cara lists: each sees only her tenant's
            eves = [pool.submit(eves_tries) for _ in range(3)]
            caras = [
                pool.submit(lambda: ok(http.get("/tasks", params={"group": "finance"}, headers=cara))) for _ in range(3)
            ]
            assert [f.result() for f in eves] == [[0, 0, 0, 404, 404, 404]] * 3
            assert all([t["task_id"] for t in f.result()] == [task_id] for f in caras)
        # Without a filter, a user's inbox: offered to one of her groups (it answered 403, "name the assignee").
        assert [t["task_id"] for t in ok(http.get("/tasks", headers=cara))] == [task_id]
        # The dashboard's inbox and its completion form hold to the same rule.
        with httpx.Client(base_url=base, timeout=60, headers={"origin": base}) as ui:
            ok_login = ui.post("/ui/login", data={"api_key": "key-eve", "next": "/ui/inbox"}, follow_redirects=True)
            assert ok_login.status_code == 200 and task_id not in ok_login.text
            form = ui.post(f"/ui/tasks/{task_id}/complete", data={"payload": '{"approved": true}'})
            assert form.status_code == 404 and "DE00" not in form.text
            processes = ui.get("/ui/processes")  # ana's process is her tenant's: not listed, nor its instances
            assert processes.status_code == 200 and "approval" not in processes.text
        # Nothing eve tried changed the task: cara, of ana's tenant and group, claims and completes it.
        assert ok(http.get(f"/tasks/{task_id}", headers=ana))["claimed_by"] is None
        ok(http.post(f"/tasks/{task_id}/claim", json={}, headers=cara))
        done = ok(http.post(f"/tasks/{task_id}/complete", json={"payload": {"approved": True}}, headers=cara))
        assert (done["status"], done["variables"]["iban"]) == ("completed", "DE00-of-ana")


def test_a_start_key_is_its_callers_own(base: str) -> None:
    """Ana's start key, sent by bob (her tenant) and by eve (another tenant's "ana") at the same moment, starts
    a journey of their own for each: it never answers with hers (her context, her instance id) nor stops
    them starting; ana sending it again gets hers, as an idempotent start does."""
    with httpx.Client(base_url=base, timeout=60) as http:

        def saga_design(key: str) -> str:  # a design is its saver's tenant's: eve's tenant has one of its own
            body = {"journey_type": "enterprise_migration"}
            return str(ok(http.post("/journeys/sagas/designs", json=body, headers=as_(key)))["journey_id"])

        anas_design, eves_design = saga_design("key-ana"), saga_design("key-eve")
        designs = {"key-ana": anas_design, "key-bob": anas_design, "key-eve": eves_design}
        ok(http.post("/processes", json=APPROVAL_PROCESS, headers=as_("key-ana")))
        ok(http.post("/processes", json={**APPROVAL_PROCESS, "name": "eves"}, headers=as_("key-eve")))  # her tenant's
        processes = {"key-ana": "approval", "key-bob": "approval", "key-eve": "eves"}

        def start(key: str, user: str) -> tuple[str, str, str]:
            body = {"user_id": user, "context": {"note": f"of-{key}"}, "start_key": "order-7"}
            saga = ok(http.post(f"/journeys/sagas/designs/{designs[key]}/executions", json=body, headers=as_(key)))
            process = ok(
                http.post(
                    f"/processes/{processes[key]}/instances",
                    json={"business_key": f"b-{key}", "variables": {"note": f"of-{key}"}, "start_key": "order-8"},
                    headers=as_(key),
                )
            )
            return saga["instance_id"], process["instance_id"], process["variables"]["note"]

        anas = start("key-ana", "ana")
        with ThreadPoolExecutor(4) as pool:
            others = list(pool.map(start, ["key-bob", "key-eve", "key-ana", "key-ana"], ["bob", "ana", "ana", "ana"]))
        bobs, eves, *again = others
        assert again == [anas, anas]  # ana's own repeats answer her journeys
        assert bobs[2] == "of-key-bob" and eves[2] == "of-key-eve"
        assert len({anas[0], bobs[0], eves[0]}) == 3 and len({anas[1], bobs[1], eves[1]}) == 3
        for key, (saga, process, _) in (("key-bob", bobs), ("key-eve", eves)):
            assert ok(http.get(f"/journeys/sagas/{saga}", headers=as_(key)))["status"] == "in_progress"
            assert ok(http.get(f"/processes/instances/{process}", headers=as_(key)))["status"] == "in_progress"
            assert http.get(f"/journeys/sagas/{anas[0]}", headers=as_(key)).status_code == 404
            assert http.get(f"/processes/instances/{anas[1]}", headers=as_(key)).status_code == 404


def test_a_process_name_is_its_tenants_and_a_shared_one_is_everyones_to_start(base: str, durable_url: str) -> None:
    """Eve, of another tenant, can neither deploy a version of ana's process (409: her version would have
    taken ana's next instances) nor start it (404); her own name is hers. A process the runtime deployed
    itself (a plugin's, say: no caller) is shared: every tenant starts it, only the default tenant's callers
    deploy its versions. Ana and eve act at once."""
    one_step = {
        **APPROVAL_PROCESS,
        "version": 2,
        "elements": [APPROVAL_PROCESS["elements"][0], {"type": "end", "id": "end"}],
        "flows": ["start -> end"],
    }

    async def deploy_shared() -> None:
        async with JourneyRuntime.open(durable_url) as rt:
            await rt.processes.deploy({**APPROVAL_PROCESS, "name": "shared"})

    asyncio.run(deploy_shared())
    with httpx.Client(base_url=base, timeout=60) as http:
        ana, eve = as_("key-ana"), as_("key-eve")
        ok(http.post("/processes", json=APPROVAL_PROCESS, headers=ana))

        def eves() -> list[int]:
            return [
                http.post(
                    "/processes", json={**one_step, "version": 2, "flows": ["start -> end"]}, headers=eve
                ).status_code,
                http.post("/processes/approval/instances", json={"business_key": "e1"}, headers=eve).status_code,
                http.post(
                    "/processes",
                    json={**one_step, "name": "shared", "version": 2, "flows": ["start -> end"]},
                    headers=eve,
                ).status_code,
                http.post("/processes/shared/instances", json={"business_key": "e2"}, headers=eve).status_code,
                http.post("/processes", json={**APPROVAL_PROCESS, "name": "eves"}, headers=eve).status_code,
            ]

        def anas() -> str:
            return str(
                ok(http.post("/processes/approval/instances", json={"business_key": "a1"}, headers=ana))["status"]
            )

        with ThreadPoolExecutor(2) as pool:
            eve_codes, ana_status = pool.submit(eves), pool.submit(anas)
            assert eve_codes.result() == [409, 404, 409, 200, 200]
            assert ana_status.result() == "in_progress"  # her version 1, waiting at its task
        assert http.post("/processes/eves/instances", json={"business_key": "a2"}, headers=ana).status_code == 404
        started = ok(http.post("/processes/approval/instances", json={"business_key": "a3"}, headers=ana))
        assert (started["version"], started["status"]) == (1, "in_progress")
        assert ok(http.post("/processes", json={**one_step, "name": "shared"}, headers=ana))["version"] == 2


def test_a_tenants_journeys_never_take_another_tenants_concurrency_slots(base: str) -> None:
    """A design limited to one journey per ``$.customer``: ana's journey for customer c-1 holds her tenant's
    slot; eve, of another tenant, starting her journey for a customer of the same name is not refused by
    ana's (nor ana's second start let through by eve's)."""
    spec = {
        "journey_type": "review",
        "steps": [{"step_id": "draft"}, {"step_id": "approve"}],
        "concurrency": {"key": "$.customer", "limit": 1, "on_limit": "reject"},
    }
    with httpx.Client(base_url=base, timeout=60) as http:
        starts = {}
        for key in ("key-ana", "key-eve"):
            design = ok(
                http.post("/journeys/sagas/designs", json={"journey_type": "review", "spec": spec}, headers=as_(key))
            )
            starts[key] = f"/journeys/sagas/designs/{design['journey_id']}/executions"
        body = {"user_id": "ana", "context": {"customer": "c-1"}}
        with ThreadPoolExecutor(2) as pool:
            first = [pool.submit(http.post, starts[key], json=body, headers=as_(key)) for key in ("key-ana", "key-eve")]
            assert [f.result().status_code for f in first] == [200, 200]
        again = http.post(starts["key-ana"], json=body, headers=as_("key-ana"))
        assert again.status_code == 409 and again.json()["type"].endswith("ConcurrencyLimitError")


class BearerAuth(OwnerRules):
    """A custom authenticator as a JWT or OIDC check is: a bearer token in ``Authorization`` names the
    caller (no API keys involved)."""

    async def authenticate(self, request: Request) -> Principal:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        tokens = {"token-ann": "ann", "token-ben": "ben"}
        if scheme.lower() != "bearer" or token not in tokens:
            raise ApiError(401, "Unauthenticated", "send a valid bearer token")
        return Principal(tokens[token], frozenset({"read", "runs", "journeys"}))


@pytest.mark.parametrize("with_keys", [False, True], ids=["no-keys", "with-keys"])
def test_the_dashboard_logs_in_through_the_apis_custom_authenticator(durable_url: str, with_keys: bool) -> None:
    """With a custom authenticator the dashboard's login takes what the API takes (a bearer token here)
    and refuses what it refuses (an API key of the settings, which the API ignores too); each user's
    dashboard shows their own journeys."""
    keys = dict(KEYS) if with_keys else {}
    settings = Settings(database_url=durable_url, api_keys=keys, authenticator=BearerAuth())
    with serving(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
        bearer = {"authorization": "Bearer token-ann"}
        anns = ok(http.post("/journeys/mvp", json={"user_id": "ann"}, headers=bearer))["session"]["session_id"]
        assert http.post("/threads/search", json={}, headers=as_("key-ana")).status_code == 401  # keys ignored
        with (
            httpx.Client(base_url=url, timeout=60, headers={"origin": url}) as ann,
            httpx.Client(base_url=url, timeout=60, headers={"origin": url}) as ben,
            httpx.Client(base_url=url, timeout=60, headers={"origin": url}) as ana,
        ):
            page = ann.post("/ui/login", data={"api_key": "token-ann", "next": "/ui/journeys"}, follow_redirects=True)
            assert page.status_code == 200 and "ann" in page.text and anns in page.text, page.text
            assert ann.get(f"/ui/journeys/{anns}").status_code == 200
            page = ben.post("/ui/login", data={"api_key": "token-ben", "next": "/ui/journeys"}, follow_redirects=True)
            assert page.status_code == 200 and "ben" in page.text and anns not in page.text, page.text
            assert ben.get(f"/ui/journeys/{anns}").status_code == 404
            refused = ana.post("/ui/login", data={"api_key": "key-ana", "next": "/ui/journeys"})
            assert refused.status_code == 401 and "send a valid bearer token" in refused.text, refused.text
            assert ana.get("/ui/journeys").status_code == 303  # not logged in: to the login form


def bearer_auth(settings: Settings) -> BearerAuth:
    """``journeys serve --auth tests.test_server_ownership:bearer_auth``: a factory taking the settings."""
    return BearerAuth()


@pytest.mark.slow
def test_journeys_serve_takes_a_custom_authenticator_by_module_and_factory(sqlite_url: str, tmp_path: Path) -> None:
    """``journeys serve --auth module:factory`` (as server/auth.py documents) serves the API and the dashboard
    through it, without API keys; a factory that is not there stops the server with a message saying so.
    On SQLite only: the authenticator is loaded and asked before any store is (it ran on PostgreSQL too, two
    servers started for the same proof; the stores' side of who may see what is in the tests above)."""
    spec = "tests.test_server_ownership:bearer_auth"
    with (
        journeys_serve(sqlite_url, tmp_path / "serve.log", "--auth", spec) as url,
        httpx.Client(base_url=url, timeout=60, headers={"origin": url}) as http,
    ):
        assert http.post("/threads/search", json={}).status_code == 401
        ok(http.post("/threads/search", json={}, headers={"authorization": "Bearer token-ann"}))
        page = http.post("/ui/login", data={"api_key": "token-ann", "next": "/ui/journeys"}, follow_redirects=True)
        assert page.status_code == 200 and "ann" in page.text, page.text
    assert "no API keys are configured" not in (tmp_path / "serve.log").read_text()
    missing = run_journeys(
        ["serve", "--database-url", sqlite_url, "--auth", "tests.test_server_ownership:no_such_factory"]
    )
    assert missing.returncode == 2, missing.stderr
    assert "error: --auth 'tests.test_server_ownership:no_such_factory'" in missing.stderr, missing.stderr
