"""The providers' informer against the fake API: list, then watch from the list's
resourceVersion; a watch that expired (410 Gone) lists again and loses nothing."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from kubernetes import client
from tuneship.controller.providers.informer import Informer
from tuneship.testing.kube import FakeKube

pytestmark = pytest.mark.integration


def config_map(name: str, value: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "tuneship", "labels": {"app": "x"}},
        "data": {"v": value},
    }  # fmt: skip


def eventually(predicate, timeout_s: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_informer_follows_changes_and_relists_after_410(caplog) -> None:
    caplog.set_level(logging.INFO, logger="tuneship.controller.k8s")
    with FakeKube("tuneship") as kube:
        core = client.CoreV1Api(kube.api_client())
        away = threading.Event()
        back = threading.Event()

        def list_call(*args, **kwargs):
            # While "away", a watch waits to reconnect: the controller lost its connection.
            if kwargs.get("watch") and away.is_set():
                back.wait(10)
            return core.list_namespaced_config_map(*args, **kwargs)

        core.create_namespaced_config_map("tuneship", config_map("before", "1"))
        unlabelled = config_map("other", "1")
        del unlabelled["metadata"]["labels"]
        core.create_namespaced_config_map("tuneship", unlabelled)
        informer = Informer(list_call, "tuneship", "app=x", what="configmaps",
                            watch_timeout_s=1, retry_s=0.1).start()  # fmt: skip
        try:
            assert informer.synced and informer.relists == 1
            assert [o["metadata"]["name"] for o in informer.items()] == ["before"]
            core.create_namespaced_config_map("tuneship", config_map("added", "1"))
            core.patch_namespaced_config_map("before", "tuneship", {"data": {"v": "2"}})
            eventually(lambda: informer.get("added") is not None, what="an added object")
            eventually(lambda: (informer.get("before") or {}).get("data") == {"v": "2"},
                       what="a modified object")  # fmt: skip

            away.set()
            time.sleep(1.5)  # the open watch times out; the reconnect waits
            core.delete_namespaced_config_map("added", "tuneship")
            core.create_namespaced_config_map("tuneship", config_map("later", "1"))
            kube.compact()  # the history the informer would resume from is gone
            away.clear()
            back.set()
            eventually(lambda: informer.relists >= 2, 15, "a relist after 410 Gone")
            eventually(lambda: informer.get("later") is not None and informer.get("added") is None,
                       what="the state after the relist")  # fmt: skip
            assert sorted(o["metadata"]["name"] for o in informer.items()) == ["before", "later"]
            assert "watch of configmaps expired (410 Gone); listing again" in caplog.text
        finally:
            informer.stop()
