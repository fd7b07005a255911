"""Credentials the chart generates are random on the first install and kept on every
upgrade: the template reads the existing Secret back with ``lookup``.

The upgrade is rendered by Helm against an API server (the shared fake,
``tuneship.testing.kube.FakeKube``) that holds the Secrets of an earlier install.
"""

from __future__ import annotations

import base64

import helm_python
import pytest
from tuneship.testing.helm import NAMESPACE, fullname, render
from tuneship.testing.kube import FakeKube

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

GENERATED = {"s3": ("access-key", "secret-key"), "minio-root": ("root-user", "root-password")}


def decoded(secret: dict) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def test_a_first_install_generates_strong_random_credentials() -> None:
    first, second = render("default"), render("default")
    for name, keys in GENERATED.items():
        one, two = decoded(first.get("Secret", name)), decoded(second.get("Secret", name))
        assert set(one) == set(keys)
        for key in keys:
            assert len(one[key]) >= 16 and one[key].isalnum(), (name, key)
            assert one[key] != two[key], (name, key)  # random, not derived from the values
    assert render({"s3": {"existingSecret": "mine"}}).has("Secret", "s3") is False
    assert render({"minio": {"existingRootSecret": "mine"}}).has("Secret", "minio-root") is False


def test_an_upgrade_keeps_the_generated_credentials() -> None:
    existing = {
        name: {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{fullname()}-{name}", "namespace": NAMESPACE},
            "type": "Opaque",
            "data": {
                key: base64.b64encode(f"kept-{key}-0123456789".encode()).decode() for key in keys
            },
        }
        for name, keys in GENERATED.items()
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    with FakeKube() as api:
        api.apply([namespace, *existing.values()])
        config = helm_python.Config(kube_apiserver=api.url, kube_token="admin", namespace=NAMESPACE)
        with config:
            upgraded = render("default", is_upgrade=True, config=config)
            other = render("default", release="other", config=config)
    for name, secret in existing.items():
        assert upgraded.get("Secret", name)["data"] == secret["data"], name
        # Another release finds nothing to keep: it gets its own random values.
        fresh = decoded(other.get("Secret", name))
        assert not any(value.startswith("kept-") for value in fresh.values()), name
