"""When the console asks for a login: beyond loopback always, without asking the
controller (the chart's console listens on 0.0.0.0 and must never open up)."""

from __future__ import annotations

import asyncio

import pytest
from tuneship.client import PipelineClient
from tuneship.console import ConsoleSettings
from tuneship.console.state import ConsoleState, is_loopback

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def never(token: str | None) -> PipelineClient:
    raise AssertionError("beyond loopback the controller is not even asked")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.244.0.7", "ts-tuneship-console"])
def test_beyond_loopback_a_login_is_always_asked_for(host: str) -> None:
    assert not is_loopback(host)
    state = ConsoleState(ConsoleSettings("ts-tuneship-controller:50051", host=host), never)
    assert asyncio.run(state.needs_login()) is True
    assert asyncio.run(state.needs_login()) is True  # and stays so


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_is_loopback(host: str) -> None:
    assert is_loopback(host)
