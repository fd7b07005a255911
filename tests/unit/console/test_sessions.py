"""Console sessions: random ids, expiry when unused, a bounded number, CSRF per session."""

from __future__ import annotations

import pytest
from tuneship.client import PipelineClient
from tuneship.console.sessions import Sessions

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client() -> PipelineClient:
    return PipelineClient("127.0.0.1:1")  # never dialled: channels connect lazily


def test_an_unused_session_expires_and_a_used_one_lives_on() -> None:
    clock = Clock()
    sessions = Sessions(idle_s=60, clock=clock)
    used, _ = sessions.create(client())
    idle, _ = sessions.create(client())
    clock.now += 50
    assert sessions.get(used) is not None
    clock.now += 50  # 100 s after creation, 50 s after its last use
    assert sessions.get(used) is not None
    assert sessions.get(idle) is None
    assert sessions.get(None) is None and sessions.get("made-up") is None


def test_ids_and_csrf_tokens_are_random_and_checked_in_full() -> None:
    sessions = Sessions(idle_s=60)
    first_id, first = sessions.create(client())
    second_id, second = sessions.create(client())
    assert first_id != second_id and len(first_id) >= 40
    assert first.csrf != second.csrf
    assert first.csrf_ok(first.csrf)
    assert not first.csrf_ok(second.csrf) and not first.csrf_ok(first.csrf[:-1])
    assert not first.csrf_ok("") and not first.csrf_ok(None)


def test_past_the_limit_the_least_recently_used_session_ends() -> None:
    clock = Clock()
    sessions = Sessions(idle_s=3600, limit=2, clock=clock)
    oldest, _ = sessions.create(client())
    clock.now += 1
    newer, _ = sessions.create(client())
    clock.now += 1
    sessions.get(oldest)  # used again: now the newer one is the least recently used
    clock.now += 1
    third, _ = sessions.create(client())
    assert sessions.get(newer) is None
    assert sessions.get(oldest) is not None and sessions.get(third) is not None
    sessions.end(third)
    assert sessions.get(third) is None
