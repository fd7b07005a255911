"""The chart's tokens and TLS: who gets which secret, as files, and what the servers
are told (docs/security.md, docs/kubernetes.md "Tokens and TLS").

The controller gets the user tokens and the worker token; every stage pod (pools and
the Job templates) gets the worker token only; the ``helm test`` pod a user token; the
console none (people log in with theirs). The generated Secret is random and kept on
upgrade. TLS mounts a kubernetes.io/tls Secret and switches the probes to TCP (the
kubelet's gRPC probe speaks no TLS); the console dials the controller as a client.
"""

from __future__ import annotations

import base64
from typing import Any

import helm_python
import kubernetes_validate
import pytest
from tuneship.testing.helm import NAMESPACE, OLDEST, Rendered, fullname, render
from tuneship.testing.kube import FakeKube

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TLS = {"tls": {"enabled": True, "secretName": "tuneship-tls", "clientAuth": True}}


def servers(result: Rendered) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Pod owner -> (pod spec, its tuneship container) for every tuneship server."""
    found = {}
    for pod in result.pod_templates():
        for container in pod.containers():
            if (container.get("args") or [""])[0] in ("serve", "list"):
                found[pod.owner] = (pod.spec, container)
    return found


def files(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each ``*_FILE``-style variable's path -> (Secret name, key) it is mounted from."""
    volumes = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
    mounted: dict[str, tuple[str, str]] = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"])
        if secret is not None:
            for item in secret["items"]:
                path = f"{mount['mountPath']}/{item['path']}"
                mounted[path] = (secret["secretName"], item["key"])
    return mounted


def secret_env(result: Rendered) -> dict[str, dict[str, tuple[str, str]]]:
    """Owner -> variable -> (Secret, key) behind the file the variable names."""
    out = {}
    for owner, (pod, container) in servers(result).items():
        mounted = files(pod, container)
        env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
        out[owner] = {name: mounted[path] for name, path in env.items() if path in mounted}
        unmounted = {n for n, p in env.items() if p.startswith("/etc/tuneship/") and
                     p not in mounted and not p.startswith("/etc/tuneship/jobs")}  # fmt: skip
        assert not unmounted, (owner, unmounted)
    return out


def test_each_pod_gets_exactly_its_tokens_as_files() -> None:
    result = render("default")
    secret = f"{result.fullname}-auth"
    by_owner = secret_env(result)
    controller = next(v for k, v in by_owner.items() if k.endswith("-controller"))
    assert controller == {"TUNESHIP_API_TOKENS_FILE": (secret, "api-tokens"),
                          "TUNESHIP_WORKER_TOKEN_FILE": (secret, "worker-token")}  # fmt: skip
    clients = ("-controller", "-test", "-console")
    workers = {k: v for k, v in by_owner.items() if not k.endswith(clients)}
    assert sorted(workers) == sorted([
        "ConfigMap/ts-tuneship-jobs:train.yaml", "Deployment/ts-tuneship-merger",
        "Deployment/ts-tuneship-converter", "Deployment/ts-tuneship-serving"])  # fmt: skip
    for owner, env in workers.items():
        assert env == {"TUNESHIP_WORKER_TOKEN_FILE": (secret, "worker-token")}, owner
        # Not even mounted: a worker pod (user model code) never holds a user token.
        assert "api-tokens" not in str(servers(result)[owner][0]), owner
    test_pod = next(v for k, v in by_owner.items() if k.endswith("-test"))
    assert test_pod == {"TUNESHIP_TOKEN_FILE": (secret, "api-tokens")}
    # The console holds no token at all: each person logs in with their own.
    console_pod, console = servers(result)[f"Deployment/{result.fullname}-console"]
    assert by_owner[f"Deployment/{result.fullname}-console"] == {}
    assert "TOKEN" not in str(console.get("env")) and "secret" not in str(console_pod["volumes"])
    data = result.get("Secret", "auth")["data"]
    tokens = {key: base64.b64decode(value).decode() for key, value in data.items()}
    assert set(tokens) == {"api-tokens", "worker-token"}
    assert all(len(t) >= 32 and t.isalnum() for t in tokens.values())
    assert tokens["api-tokens"] != tokens["worker-token"]
    assert render("default").get("Secret", "auth")["data"] != data  # random per install


def test_an_upgrade_keeps_the_tokens_and_an_existing_secret_is_used_as_it_is() -> None:
    kept = {"api-tokens": base64.b64encode(b"kept-user-token-0123456789").decode(),
            "worker-token": base64.b64encode(b"kept-worker-token-0123456789").decode()}  # fmt: skip
    existing = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": kept,
                "metadata": {"name": f"{fullname()}-auth", "namespace": NAMESPACE}}  # fmt: skip
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    with FakeKube() as api:
        api.apply([namespace, existing])
        config = helm_python.Config(kube_apiserver=api.url, kube_token="admin", namespace=NAMESPACE)
        with config:
            upgraded = render("default", is_upgrade=True, config=config)
    assert upgraded.get("Secret", "auth")["data"] == kept
    mine = render({"auth": {"existingSecret": "my-tokens"}})
    assert not mine.has("Secret", "auth")
    for owner, env in secret_env(mine).items():
        expected = set() if owner.endswith("-console") else {"my-tokens"}
        assert {secret for secret, _key in env.values()} == expected, owner
    off = render({"auth": {"enabled": False}})
    assert not off.has("Secret", "auth")
    assert all(env == {} for env in secret_env(off).values())


def test_tls_mounts_the_certificate_everywhere_and_probes_tcp() -> None:
    result = render(TLS)
    for owner, env in secret_env(result).items():
        tls = {name: key for name, (secret, key) in env.items() if secret == "tuneship-tls"}
        if owner.endswith(("-test", "-console")):  # clients of the controller
            assert tls == {"TUNESHIP_CA": "ca.crt", "TUNESHIP_CERT": "tls.crt",
                           "TUNESHIP_KEY": "tls.key"}, owner  # fmt: skip
            continue
        served = {"TUNESHIP_TLS_CERT": "tls.crt", "TUNESHIP_TLS_KEY": "tls.key",
                  "TUNESHIP_TLS_CLIENT_CA": "ca.crt"}  # fmt: skip
        if owner.endswith("-controller"):
            served |= {"TUNESHIP_WORKER_CA": "ca.crt", "TUNESHIP_WORKER_CERT": "tls.crt",
                       "TUNESHIP_WORKER_KEY": "tls.key"}  # fmt: skip
        assert tls == served, owner
    for owner, (_pod, container) in servers(result).items():
        if owner.endswith(("-test", "-console")):  # the console serves plain HTTP
            continue
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["tcpSocket"] == {"port": 50051}, (owner, probe)
    env = result.env("Deployment", "controller", "controller")
    assert env["TUNESHIP_WORKER_TLS_NAME"] == f"{result.fullname}-worker"
    for manifest in result.manifests:
        kubernetes_validate.validate(manifest, OLDEST, strict=True)
    plain = render("default").env("Deployment", "controller", "controller")
    assert not {"TUNESHIP_TLS_CERT", "TUNESHIP_WORKER_CA"} & set(plain)


@pytest.mark.parametrize(
    ("values", "message"),
    [({"tls": {"enabled": True}}, "tls.enabled needs tls.secretName"),
     ({"tls": {"clientAuth": True}}, "tls.clientAuth needs tls.enabled=true"),
     ({"auth": {"token": "x"}}, "token")],
)  # fmt: skip
def test_inconsistent_auth_values_name_the_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        render(values)
