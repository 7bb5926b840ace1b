"""The console in a real browser (Debian's chromium driven by Playwright)."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections

from tests.conftest import CHROMIUM

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 10_000


def off_thread(func, *args, **kwargs):
    """ORM work away from Playwright's event loop, which Django would refuse."""

    def call():
        try:
            return func(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result(timeout=30)


@pytest.fixture
def console_errors():
    """Errors the page logs; every test ends with none it did not expect."""
    errors: list[str] = []
    yield errors
    assert errors == []


@pytest.fixture
def page(server, console_errors):
    # Requested last by the tests: database fixtures must run before Playwright's
    # loop starts, or Django refuses them as called from async code.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(base_url=server.base_url)
        page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
        page.on("pageerror", lambda e: console_errors.append(str(e)))
        yield page
        browser.close()


def log_in(page, username):
    page.goto("/")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pw-1234-x")
    page.click("button[type=submit]")


def test_it_asks_for_login_then_shows_the_fleet_live(registered_agent, make_operator, page):
    from playwright.sync_api import expect

    user, _ = off_thread(make_operator, "operator")
    log_in(page, user.username)

    expect(page.locator('#agents tbody tr[data-id="worker-01"]')).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#live")).to_have_attribute("data-state", "open", timeout=WAIT_MS)


def test_it_updates_without_reload_when_an_agent_fails(registered_agent, make_operator, page):
    from playwright.sync_api import expect

    from monitoring.services import record_heartbeat

    agent, _ = registered_agent
    user, _ = off_thread(make_operator, "viewer")
    log_in(page, user.username)
    expect(page.locator("#live")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    loaded = page.evaluate("performance.timeOrigin")

    off_thread(record_heartbeat, agent, state="failed")

    state = page.locator('#agents tbody tr[data-id="worker-01"] td').nth(2)
    expect(state).to_have_text("failed", timeout=WAIT_MS)
    expect(page.locator('#events li[data-name="monitor.agent.state_changed"]').first).to_be_visible(
        timeout=WAIT_MS
    )
    assert page.evaluate("performance.timeOrigin") == loaded  # same page, no reload


def test_it_shows_a_batch_of_events_and_each_event_once(registered_agent, make_operator, page):
    from playwright.sync_api import expect

    from omoi_console.foundation.events import publish, publish_many
    from omoi_console.foundation.events.broadcast import broadcast_events
    from tests.test_console_feed import LOST, state_changes

    user, _ = off_thread(make_operator, "viewer")
    log_in(page, user.username)
    expect(page.locator("#live")).to_have_attribute("data-state", "open", timeout=WAIT_MS)

    events = off_thread(publish_many, state_changes(3))
    for event in events:
        expect(page.locator(f'#events li[data-id="{event.id}"]')).to_be_visible(timeout=WAIT_MS)
    # Delivery is at least once: the same batch again, then a marker sent after it.
    off_thread(broadcast_events, events)
    marker = off_thread(publish, "monitor.agent.heartbeat_lost", LOST)
    expect(page.locator(f'#events li[data-id="{marker.id}"]')).to_be_visible(timeout=WAIT_MS)

    for event in events:
        assert page.locator(f'#events li[data-id="{event.id}"]').count() == 1


def test_it_keeps_people_without_a_role_out(seeded, console_errors, page):
    from django.contrib.auth import get_user_model

    off_thread(get_user_model().objects.create_user, "nobody", password="pw-1234-x")
    log_in(page, "nobody")
    assert page.locator("body").inner_text().strip().startswith("403")
    assert any("403" in error for error in console_errors)
    console_errors.clear()


def test_the_rule_form_shows_only_the_fields_of_the_chosen_kind(seeded, make_operator, page):
    from alerting.models import AlertRule

    off_thread(make_operator, "admin", "ada")
    rule = off_thread(lambda: AlertRule.objects.get(name="agent-heartbeat"))
    page.goto(f"/admin/alerting/alertrule/{rule.pk}/change/")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "pw-1234-x")
    page.click("[type=submit]")
    page.wait_for_selector("select[data-kind-fields]", timeout=WAIT_MS)

    # A heartbeat rule watches no metric: the metric's fields are hidden.
    assert page.locator(".form-row.field-metric").is_hidden()
    assert page.locator(".form-row.field-summary").is_visible()

    page.select_option("select[name=kind]", "absent")
    assert page.locator(".form-row.field-metric").is_visible()
    assert page.locator(".form-row.field-params").is_visible()
    assert page.locator(".form-row.field-threshold").is_hidden()


def test_it_shows_within_seconds_that_a_console_process_stopped(
    registered_agent, make_operator, console_errors, page
):
    import re
    import time

    from django.core.cache import cache
    from playwright.sync_api import expect

    from observability import liveness

    user, _ = off_thread(make_operator, "viewer")
    log_in(page, user.username)
    banner = page.locator("#health")
    expect(page.locator("#live")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    expect(banner).to_be_hidden()

    try:
        # A ticker that started, then stopped beating 30 s ago; it publishes nothing.
        liveness.started(liveness.TICKER)
        cache.set(liveness._key(liveness.TICKER), time.time() - 30)
        expect(banner).to_have_text(re.compile(r"degraded: ticker stale 3\ds"), timeout=WAIT_MS)
        expect(banner).to_be_visible()

        liveness.record_alive(liveness.TICKER)
        expect(banner).to_be_hidden(timeout=WAIT_MS)
    finally:
        liveness.stopped(liveness.TICKER)
    # The browser reports each 503 from /healthz as a failed resource load.
    console_errors[:] = [error for error in console_errors if "503" not in error]


def test_an_operator_approves_a_waiting_step_from_the_action_page(
    registered_agent, make_operator, page
):
    from playwright.sync_api import expect

    from monitoring.services import record_heartbeat
    from tests.test_watchdog_approval import ask_first
    from watchdog.models import ActionStatus, RemediationAction
    from watchdog.policies import MAX_APPROVAL_SECONDS

    agent, _ = registered_agent
    off_thread(ask_first, MAX_APPROVAL_SECONDS)
    user, _ = off_thread(make_operator, "operator", "olga")
    off_thread(record_heartbeat, agent, state="failed")
    action = off_thread(lambda: RemediationAction.objects.get())
    assert action.status == ActionStatus.AWAITING_APPROVAL
    log_in(page, user.username)
    expect(page.locator("#approval-count")).to_have_text("1 awaiting approval", timeout=WAIT_MS)

    page.goto(f"/actions/{action.pk}")
    page.fill("#approval-form input[name=reason]", "host checked")
    page.click("#approval-form button[value=approve]")

    expect(page.locator("#approval-decision")).to_contain_text("approved by olga", timeout=WAIT_MS)
    expect(page.locator("#approval-decision")).to_contain_text("(host checked)")
    action = off_thread(lambda: RemediationAction.objects.get())
    assert action.status == ActionStatus.VERIFYING
    assert action.approval_decided_by == "olga"
