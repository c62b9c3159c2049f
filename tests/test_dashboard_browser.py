"""The dashboard at /ui, driven in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
installed by .ci/run): log in with an API key, list and filter journeys, open one, see its timeline and
its pending timer, complete its user task and see it move on. Without the browser the test fails, naming
the packages to install; it never skips."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from server.app import create_app
from server.settings import ApiKey, Settings
from tests.server_support import serving

pytestmark = pytest.mark.slow

KEY = "dashboard-test-key"
HOSTILE = "<script>window.pwned=1</script>"
EXPENSE = {
    "name": "expense",
    "elements": [
        {"type": "start", "id": "start"},
        {
            "type": "user_task",
            "id": "approve",
            "title": "Approve the expense",
            "candidate_groups": ["finance"],
            "response_schema": {
                "type": "object",
                "required": ["approved"],
                "properties": {"approved": {"type": "boolean"}},
            },
            "sla": "PT4H",
            "on_timeout": {"action": "reassign", "candidate_groups": ["finance-leads"]},
        },
        {"type": "timer", "id": "cooling_off", "timer": {"duration": "P1D"}},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> approve", "approve -> cooling_off", "cooling_off -> end"],
}


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail(
            "the dashboard test needs Debian's headless browser: apt-get install -y chromium chromium-driver "
            f"(found chromium={browser}, chromedriver={driver}); .ci/run installs them",
            pytrace=False,
        )
    return browser, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    binary, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def seed(base: str) -> dict[str, Any]:
    """Through the JSON API: a process parked at a user task (with its SLA timer) and a structured journey
    whose user id is hostile markup."""
    headers = {"x-api-key": KEY}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        http.post("/processes", json=EXPENSE).raise_for_status()
        started = http.post(
            "/processes/expense/instances", json={"business_key": "exp-7", "variables": {"amount": 120}}
        )
        started.raise_for_status()
        design = http.post("/journeys/structured/designs", json={"journey_type": "content_migration"})
        design.raise_for_status()
        run = http.post(f"/journeys/structured/{design.json()['journey_id']}/executions", json={"user_id": HOSTILE})
        run.raise_for_status()
        return {"process": started.json()["instance_id"], "structured": run.json()["instance_id"]}


def click_and_load(driver: WebDriver, element: WebElement, *, confirm: bool = False) -> None:
    """Click a link or a form's button and wait for the page it leads to: a click returns before the
    browser has the answer (a task's completion runs its process first), so the old page may still be up.
    ``confirm``: the form asks first (``data-confirm``), and the dialog is accepted."""
    driver.execute_script("window.leaving = true")  # gone once the next page is up (a new window object)
    element.click()
    if confirm:
        WebDriverWait(driver, 10).until(expected_conditions.alert_is_present())
        driver.switch_to.alert.accept()
    # While the browser navigates, a script may be refused (chromedriver): polled again until the timeout.
    WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script("return window.leaving === undefined && document.readyState === 'complete'")
    )


def rows(driver: WebDriver) -> list[str]:
    return [row.get_attribute("data-instance") or "" for row in driver.find_elements(By.CSS_SELECTOR, "tr.journey")]


def test_the_dashboard_lists_filters_shows_and_completes_a_task_in_a_real_browser(
    tmp_path: Path, browser: WebDriver
) -> None:
    # 'impersonate': the structured journey is run for a (hostile) user id other than Ana's own.
    keys = {KEY: ApiKey("ana", frozenset({"read", "journeys", "tasks", "impersonate"}), ("finance",))}
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'dash.db'}", api_keys=keys))
    with serving(app) as base:
        ids = seed(base)

        browser.get(f"{base}/ui")  # no key yet: the login form, then back where we were going
        assert "/ui/login" in browser.current_url
        browser.find_element(By.ID, "api_key").send_keys("wrong")
        click_and_load(browser, browser.find_element(By.ID, "login"))
        assert browser.find_element(By.ID, "login-error").is_displayed()
        browser.find_element(By.ID, "api_key").send_keys(KEY)
        click_and_load(browser, browser.find_element(By.ID, "login"))
        assert browser.current_url.endswith("/ui/journeys")

        # The list, with its counts; the hostile user id is shown as text, never run.
        assert sorted(rows(browser)) == sorted(ids.values())
        assert browser.find_element(By.ID, "total").text == "2"
        assert HOSTILE in browser.find_element(By.ID, "journeys").text
        assert browser.execute_script("return window.pwned") is None

        # Filtering: the pattern select applies itself (the page's script), the user field on submit.
        Select(browser.find_element(By.ID, "f-pattern")).select_by_value("process")
        WebDriverWait(browser, 10).until(lambda d: "pattern=process" in d.current_url)
        assert rows(browser) == [ids["process"]]
        user = browser.find_element(By.ID, "f-user")
        user.send_keys("someone-else")
        click_and_load(browser, browser.find_element(By.ID, "apply"))
        assert rows(browser) == []
        assert browser.find_element(By.ID, "total").text == "0"
        browser.find_element(By.ID, "f-user").clear()
        browser.find_element(By.ID, "f-user").send_keys("exp-7")
        click_and_load(browser, browser.find_element(By.ID, "apply"))
        assert rows(browser) == [ids["process"]]

        # One journey: its graph with the waiting node highlighted, its timeline, its pending SLA timer.
        click_and_load(browser, browser.find_element(By.LINK_TEXT, ids["process"]))
        current = browser.find_elements(By.CSS_SELECTOR, "#graph g.node.current")
        assert [node.get_attribute("data-node") for node in current] == ["approve"]
        assert [e.get_attribute("data-type") for e in browser.find_elements(By.CSS_SELECTOR, "#timeline tr.event")] == [
            "process.started",
            "task.created",
        ]
        [timer] = browser.find_elements(By.CSS_SELECTOR, "#timers tr.timer.scheduled")
        assert "approve" in timer.text and "due in" in timer.text
        [task] = browser.find_elements(By.CSS_SELECTOR, "tr.task.open")
        assert "on time" in task.find_element(By.CSS_SELECTOR, ".sla").text
        assert '"amount": 120' in browser.find_element(By.ID, "variables").text

        # Complete the task from the inbox; the journey moves on to its timer.
        click_and_load(browser, browser.find_element(By.LINK_TEXT, "Inbox"))
        form = browser.find_element(By.CSS_SELECTOR, "#inbox form.complete")
        payload = form.find_element(By.NAME, "payload")
        assert payload.get_attribute("value") == '{"approved": false}'
        payload.clear()
        payload.send_keys('{"approved": true}')
        click_and_load(browser, form.find_element(By.TAG_NAME, "button"))
        assert browser.current_url.endswith(f"/ui/journeys/{ids['process']}")
        current = browser.find_elements(By.CSS_SELECTOR, "#graph g.node.current")
        assert [node.get_attribute("data-node") for node in current] == ["cooling_off"]
        events = [e.get_attribute("data-type") for e in browser.find_elements(By.CSS_SELECTOR, "#timeline tr.event")]
        assert events[-2:] == ["wait.completed", "wait.armed"]
        assert '"approved": true' in browser.find_element(By.ID, "variables").text
        scheduled = browser.find_elements(By.CSS_SELECTOR, "#timers tr.timer.scheduled")
        assert [t.find_element(By.TAG_NAME, "td").text for t in scheduled] == ["cooling_off"]
        assert browser.find_elements(By.CSS_SELECTOR, "tr.task.open") == []

        # Terminate it from its page, with a reason, once the browser has asked: its timer goes with it.
        browser.find_element(By.CSS_SELECTOR, "form[action$='/terminate'] input[name=reason]").send_keys("withdrawn")
        click_and_load(browser, browser.find_element(By.ID, "terminate"), confirm=True)
        assert browser.current_url.endswith(f"/ui/journeys/{ids['process']}")
        [last] = browser.find_elements(By.CSS_SELECTOR, "#timeline tr.event")[-1:]
        assert last.get_attribute("data-type") == "journey.terminated"
        assert "withdrawn" in (last.get_attribute("textContent") or "")  # in its payload, folded
        assert browser.find_elements(By.CSS_SELECTOR, "#timers tr.timer.scheduled") == []
        assert browser.find_elements(By.ID, "terminate") == browser.find_elements(By.ID, "cancel") == []


MIGRATION = ["upload_content", "analyze_content", "transform_data", "validate_results"]
WORK = frozenset({"read", "journeys", "tasks"})


def structured_journey(http: httpx.Client, user: str, steps: int) -> str:
    """Through the JSON API (as ``http``'s key): a structured journey of ``user`` advanced ``steps`` steps."""
    design = http.post("/journeys/structured/designs", json={"journey_type": "content_migration"})
    journey = design.raise_for_status().json()["journey_id"]
    run = http.post(f"/journeys/structured/{journey}/executions", json={"user_id": user}).raise_for_status()
    for step in MIGRATION[:steps]:
        advance = f"/journeys/structured/{journey}/users/{user}/advance"
        http.post(advance, json={"step_result": {"files": [step]}}).raise_for_status()
    return str(run.json()["instance_id"])


def bob_works_meanwhile(base: str, stop: threading.Event, done: list[str], errors: list[BaseException]) -> None:
    """Bob, on the dashboard from another client while Ana uses the browser: he starts journeys (JSON API) and
    forks them from their pages (the dashboard's form, with his login cookie), until told to stop."""
    try:
        with (
            httpx.Client(base_url=base, headers={"x-api-key": "bob-key"}, timeout=30) as api,
            httpx.Client(base_url=base, timeout=30, headers={"origin": base}) as page,
        ):
            page.post("/ui/login", data={"api_key": "bob-key", "next": "/ui/journeys"})
            while not stop.is_set():
                journey = structured_journey(api, "bob", 2)
                assert page.get(f"/ui/journeys/{journey}").status_code == 200
                forked = page.post(f"/ui/journeys/{journey}/fork", data={"step_id": "upload_content"})
                assert forked.status_code == 303, forked.text
                done += [journey, forked.headers["location"].removeprefix("/ui/journeys/")]
    except BaseException as failure:  # reported by the test, in its own thread
        errors.append(failure)


def test_two_users_use_the_dashboard_at_once_and_one_forks_a_journey_from_its_timeline(
    tmp_path: Path, browser: WebDriver
) -> None:
    keys = {"ana-key": ApiKey("ana", WORK), "bob-key": ApiKey("bob", WORK)}
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'two.db'}", api_keys=keys))
    with serving(app) as base:
        with httpx.Client(base_url=base, headers={"x-api-key": "ana-key"}, timeout=30) as ana_api:
            anas = structured_journey(ana_api, "ana", 2)
        with httpx.Client(base_url=base, headers={"x-api-key": "bob-key"}, timeout=30) as bob_api:
            bobs = structured_journey(bob_api, "bob", 2)
        stop, bob_made, errors = threading.Event(), [bobs], []
        bob = threading.Thread(target=bob_works_meanwhile, args=(base, stop, bob_made, errors), daemon=True)
        bob.start()
        try:
            browser.get(f"{base}/ui/login")
            browser.find_element(By.ID, "api_key").send_keys("ana-key")
            click_and_load(browser, browser.find_element(By.ID, "login"))
            assert rows(browser) == [anas]  # none of Bob's, though he is adding his meanwhile

            # Ana's journey: its timeline offers a fork after each completed step; she forks after step 2.
            click_and_load(browser, browser.find_element(By.LINK_TEXT, anas))
            buttons = browser.find_elements(By.CSS_SELECTOR, "#timeline button.fork")
            assert [b.get_attribute("data-step") for b in buttons] == MIGRATION[:2]
            assert browser.find_element(By.ID, "current-step").text == "transform_data"
            browser.execute_script("window.leaving = true")
            buttons[1].click()
            WebDriverWait(browser, 10).until(expected_conditions.alert_is_present()).accept()  # the confirm
            WebDriverWait(browser, 20, ignored_exceptions=(WebDriverException,)).until(
                lambda d: d.execute_script("return window.leaving === undefined && document.readyState === 'complete'")
            )
            # The new journey: forked from hers after step 2, waiting at step 3; hers is as it was.
            fork = browser.find_element(By.ID, "instance-id").text
            assert fork != anas and browser.current_url.endswith(f"/ui/journeys/{fork}")
            assert browser.find_element(By.ID, "forked-from").find_element(By.TAG_NAME, "a").text == anas
            assert "analyze_content" in browser.find_element(By.ID, "forked-from").text
            assert browser.find_element(By.ID, "current-step").text == "transform_data"
            events = [
                e.get_attribute("data-type") for e in browser.find_elements(By.CSS_SELECTOR, "#timeline tr.event")
            ]
            assert events.count("step.completed") == 2 and events[-1] == "journey.forked_from"
            click_and_load(browser, browser.find_element(By.LINK_TEXT, "Journeys"))
            assert sorted(rows(browser)) == sorted([anas, fork])
            click_and_load(browser, browser.find_element(By.LINK_TEXT, anas))
            assert browser.find_element(By.ID, "current-step").text == "transform_data"
            assert browser.find_element(By.ID, "forks").find_element(By.TAG_NAME, "a").text == fork

            # Bob's journey, by its URL: not found for Ana, as if it did not exist.
            browser.get(f"{base}/ui/journeys/{bobs}")
            assert browser.find_element(By.TAG_NAME, "h1").text == "404"
            assert bobs in browser.find_element(By.ID, "error").text
            WebDriverWait(browser, 60).until(lambda _d: len(bob_made) >= 3 or errors)  # Bob forked one meanwhile
        finally:
            stop.set()
            bob.join(timeout=60)
        assert not errors, errors
        assert len(bob_made) >= 3
        with httpx.Client(base_url=base, headers={"x-api-key": "bob-key"}, timeout=30) as bob_api:
            bob_api.post("/ui/login", data={"api_key": "bob-key", "next": "/ui/journeys"})
            listing = bob_api.get("/ui/journeys").text
        assert anas not in listing and fork not in listing
        assert all(journey in listing for journey in bob_made)
