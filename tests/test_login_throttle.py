"""The login form counts failed logins per username and per source in the cache."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.urls import reverse

from tests.conftest import captured_log

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-7"


@pytest.fixture(autouse=True)
def throttle(settings):
    """Small limits, and no counts left over in the (possibly shared) cache."""
    settings.LOGIN_FAILURES_PER_USER = "3/15minutes"
    settings.LOGIN_FAILURES_PER_SOURCE = "5/15minutes"
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice", password=PASSWORD)


def attempt(client, username, password, source="198.51.100.1"):
    return client.post(
        reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=source
    )


def assert_throttled(response):
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 15 * 60
    assert b"Too many failed logins" in response.content
    return response


def test_it_throttles_a_username_after_its_failed_logins_from_any_source(client, alice):
    statuses = [attempt(client, "alice", "wrong", f"198.51.100.{n}").status_code for n in range(3)]

    assert statuses == [200, 200, 200]  # the form again, with an error
    # Even the right password waits: a guesser must not learn that it was right.
    assert_throttled(attempt(client, "alice", PASSWORD, "203.0.113.50"))
    assert "_auth_user_id" not in client.session
    assert attempt(client, "bob", "wrong", "203.0.113.50").status_code == 200


def test_it_throttles_a_source_that_guesses_across_usernames(client, alice):
    for n in range(5):
        assert attempt(client, f"user-{n}", "wrong").status_code == 200

    assert_throttled(attempt(client, "alice", PASSWORD))
    response = attempt(client, "alice", PASSWORD, source="203.0.113.7")

    assert response.status_code == 302  # another source is not held back


def test_it_neither_counts_nor_slows_a_successful_login(client, alice):
    attempt(client, "alice", "wrong")
    attempt(client, "alice", "wrong")
    for _ in range(3):
        assert attempt(client, "alice", PASSWORD).status_code == 302
        client.logout()

    assert attempt(client, "alice", "wrong").status_code == 200  # the third failure
    assert_throttled(attempt(client, "alice", PASSWORD))


def test_it_answers_alike_whether_or_not_the_username_exists(client, alice):
    for _ in range(3):
        attempt(client, "alice", "wrong", "198.51.100.1")
        attempt(client, "nobody", "wrong", "198.51.100.2")

    known = assert_throttled(attempt(client, "alice", "wrong", "198.51.100.1"))
    unknown = assert_throttled(attempt(client, "nobody", "wrong", "198.51.100.2"))

    def page(response):
        text = response.content.decode()
        return text.replace(str(response.context["csrf_token"]), "")

    assert page(known) == page(unknown)


def test_it_sends_the_admin_login_through_the_throttled_form(client):
    response = client.get("/admin/login/?next=/admin/")

    assert response.status_code == 302
    assert response["Location"] == reverse("login") + "?next=/admin/"


def test_it_logs_a_throttle_once_when_it_starts(client, alice):
    lines = []
    with captured_log(lines):
        for _ in range(6):
            attempt(client, "alice", "wrong")

    throttled = [line for line in lines if line["event"] == "login.throttled"]
    assert [(t["limit"], t["source"], t["count"]) for t in throttled] == [
        ("username", "198.51.100.1", 3)
    ]
    assert not [line for line in lines if line.get("logger") == "django.request"]
    assert "wrong" not in json.dumps(lines)
