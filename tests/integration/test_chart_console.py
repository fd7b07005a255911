"""The web console in the chart (docs/console.md "On a cluster"): what a user relies on.

Rendered with Helm's own engine (helm-python-sdk) and validated with
kubernetes-validate. The rendered container command is parsed by the real CLI, and
run as a real ``tuneship serve console`` process with the rendered arguments and
environment (only its port and the controller's address swapped for loopback ones,
and the mounted files for local copies) in front of a real controller that takes
tokens and mutual TLS: the chart cannot drift from the console's flags.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import helm_python
import httpx
import kubernetes_validate
import pytest
from tuneship.common.auth import AuthSettings, ClientTls, ServerTls
from tuneship.common.stages import STAGES
from tuneship.console.state import is_loopback
from tuneship.testing.cluster import Cluster, start_cluster
from tuneship.testing.console import TOKEN
from tuneship.testing.helm import (
    CHART_DIR,
    NEWEST,
    OLDEST,
    Rendered,
    render,
    selector_matches,
)
from tuneship.testing.kube.tls import CertificateAuthority
from tuneship.testing.kubecluster import free_port
from tuneship.testing.stages import ScriptedStage
from typer.testing import CliRunner

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TUNESHIP = str(Path(sys.executable).parent / "tuneship")
INGRESS = {"console": {"ingress": {"enabled": True, "host": "console.example.com",
                                   "tlsSecretName": "console-tls"}}}  # fmt: skip
TLS = {"tls": {"enabled": True, "secretName": "tuneship-tls", "clientAuth": True}}
COMPONENT = "app.kubernetes.io/component"


TlsCluster = tuple[Cluster, CertificateAuthority, tuple[Path, Path]]
"""A running controller, its CA, and the chart's one certificate and key."""


def console_objects(result: Rendered) -> list[dict[str, Any]]:
    """Every rendered object labelled as the console's."""
    return [m for m in result.manifests if m["metadata"]["labels"].get(COMPONENT) == "console"]


def console_pod(result: Rendered) -> dict[str, Any]:
    return dict(result.get("Deployment", "console")["spec"]["template"]["spec"])


def console_container(result: Rendered) -> dict[str, Any]:
    [container] = console_pod(result)["containers"]
    return dict(container)


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


# --- what is rendered ------------------------------------------------------------------


def test_the_console_serves_the_controller_services_grpc_port_on_every_interface() -> None:
    result = render("default")
    container = console_container(result)
    args = container["args"]
    assert args[:2] == ["serve", "console"]
    service = result.get("Service", "controller")
    [grpc] = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert option(args, "--controller") == f"{service['metadata']['name']}:{grpc['port']}"
    # Every interface (probes at the pod IP, port-forward at its loopback): beyond
    # loopback the console always asks for a login, whatever the controller does.
    assert option(args, "--host") == "0.0.0.0" and not is_loopback(option(args, "--host"))
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert option(args, "--port") == "8080"
    assert "--secure-cookie" not in args  # plain HTTP through a port-forward
    controller = result.get("Deployment", "controller")["spec"]["template"]["spec"]
    assert container["image"] == controller["containers"][0]["image"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and resources["limits"]["memory"]
    assert result.get("Deployment", "console")["spec"]["replicas"] == 1  # sessions in memory


def test_the_console_pod_has_no_token_no_rights_and_the_restricted_profile() -> None:
    result = render("default")
    pod = console_pod(result)
    account = f"{result.fullname}-console"
    assert pod["serviceAccountName"] == account
    assert pod["automountServiceAccountToken"] is False
    assert result.get("ServiceAccount", "console")["automountServiceAccountToken"] is False
    for binding in result.all("RoleBinding") + result.all("ClusterRoleBinding"):
        assert account not in str(binding["subjects"]), binding["metadata"]["name"]
    assert pod["enableServiceLinks"] is False
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    context = console_container(result)["securityContext"]
    assert context == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                       "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    # The root filesystem is read-only: /tmp (a multipart upload may spill there) and
    # HOME are emptyDirs, and no Secret is mounted without TLS.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("emptyDir" in v for v in volumes.values())
    mounts = {m["mountPath"]: m["name"] for m in console_container(result)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert env_of(console_container(result))["HOME"] in mounts


@pytest.mark.parametrize("values", ["default", "ingress-tls"])
def test_the_service_selects_exactly_the_console_pods(values: str) -> None:
    result = render(values)
    service = result.get("Service", "console")
    assert service["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", 8080, "http")
    ]  # fmt: skip
    picked = [
        p.owner
        for p in result.pod_templates()
        if selector_matches({"matchLabels": service["spec"]["selector"]}, p.labels)
    ]
    assert picked == [f"Deployment/{result.fullname}-console"]


def test_the_ingress_routes_https_to_the_console_and_the_cookie_is_then_secure() -> None:
    assert not render("default").has("Ingress", "console")
    result = render("ingress-tls")  # the example: the user API and the console
    ingress = result.get("Ingress", "console")
    host = "console.tuneship.example.com"
    assert ingress["spec"]["tls"] == [{"hosts": [host], "secretName": "tuneship-console-tls"}]
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == host != result.get("Ingress", "controller")["spec"]["rules"][0]["host"]
    [path] = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    assert path["backend"]["service"] == {"name": f"{result.fullname}-console",
                                          "port": {"name": "http"}}  # fmt: skip
    # Plain HTTP to the console: never the gRPC backend annotation of the user API's.
    assert "backend-protocol" not in str(ingress["metadata"].get("annotations"))
    assert "--secure-cookie" in console_container(result)["args"]
    # A TLS proxy of one's own instead of the chart's Ingress.
    own = render({"console": {"secureCookie": True}})
    assert "--secure-cookie" in console_container(own)["args"]
    assert not own.has("Ingress", "console")


@pytest.mark.parametrize("client_auth", [False, True])
def test_controller_tls_gives_the_console_the_ca_as_the_cli_reads_it(client_auth: bool) -> None:
    values = {"tls": {"enabled": True, "secretName": "tuneship-tls", "clientAuth": client_auth}}
    result = render(values)
    pod, container = console_pod(result), console_container(result)
    env = env_of(container)
    expected = {"TUNESHIP_CA": "/etc/tuneship/tls/ca.crt"}
    if client_auth:
        expected |= {"TUNESHIP_CERT": "/etc/tuneship/tls/tls.crt",
                     "TUNESHIP_KEY": "/etc/tuneship/tls/tls.key"}  # fmt: skip
    assert {k: v for k, v in env.items() if k.startswith("TUNESHIP_")} == expected
    [tls] = [v for v in pod["volumes"] if "secret" in v]
    assert tls["secret"]["secretName"] == "tuneship-tls"
    keys = {item["key"]: item["path"] for item in tls["secret"]["items"]}
    assert keys == {k: k for k in (["ca.crt", "tls.crt", "tls.key"] if client_auth else ["ca.crt"])}
    [mount] = [m for m in container["volumeMounts"] if m["name"] == tls["name"]]
    assert (mount["mountPath"], mount.get("readOnly")) == ("/etc/tuneship/tls", True)
    # Still plain HTTP towards the browsers: the probes call /healthz over HTTP.
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_disabled_renders_no_console_object_at_all() -> None:
    result = render({"console": {"enabled": False}})
    assert console_objects(result) == []
    assert "-console" not in str([m["metadata"]["name"] for m in result.manifests])
    # Nor is the console a peer of the controller's user API any more.
    controller = result.get("NetworkPolicy", "controller")
    assert "console" not in str(controller["spec"]["ingress"])
    assert "console" not in result.notes


@pytest.mark.parametrize("name", ["default", "ingress-tls"])
def test_every_console_object_validates_strictly(name: str) -> None:
    for values in (name, {**TLS, **INGRESS}):
        result = render(values)
        objects = console_objects(result)
        kinds = sorted(m["kind"] for m in objects)
        wanted = ["Deployment", "NetworkPolicy", "Service", "ServiceAccount"]
        has_ingress = values != "default"
        assert kinds == sorted(wanted + ["Ingress"] * has_ingress), values
        for manifest in objects:
            for version in (OLDEST, NEWEST):
                kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"console": {"ingress": {"enabled": True}}}, "console.ingress.tlsSecretName"),
        ({"console": {"enabled": False, "ingress": {"enabled": True, "host": "c.example.com",
                                                    "tlsSecretName": "c"}}},
         "console.ingress.enabled needs console.enabled=true"),
        ({"ingress": {"enabled": True, "host": "t.example.com", "tlsSecretName": "t"},
          "console": {"ingress": {"enabled": True, "host": "t.example.com",
                                  "tlsSecretName": "c"}}},
         "console.ingress.host must differ from ingress.host"),
    ],
)  # fmt: skip
def test_inconsistent_console_values_fail_with_the_keys_to_set(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        render(values)


@pytest.mark.parametrize(
    ("values", "at"),
    [
        ({"console": {"replicas": 2}}, "'/console'"),
        ({"console": {"secureCookie": "yes"}}, "'/console/secureCookie'"),
        ({"console": {"ingress": {"host": "Console_Host"}}}, "'/console/ingress/host'"),
    ],
)
def test_the_schema_refuses_bad_console_values(values: dict[str, Any], at: str) -> None:
    with (
        helm_python.Chart.load(CHART_DIR) as chart,
        pytest.raises(helm_python.HelmValuesError, match=f"at {at}"),
    ):
        chart.validate_schema(values)


def test_notes_tell_how_to_reach_the_console() -> None:
    result = render("default")
    assert f"port-forward service/{result.fullname}-console 8080:8080" in result.notes
    assert "http://localhost:8080/" in result.notes
    through_ingress = render("ingress-tls")
    assert "https://console.tuneship.example.com/" in through_ingress.notes
    assert "-console 8080:8080" not in through_ingress.notes


# --- the real CLI takes what is rendered -----------------------------------------------


@pytest.mark.parametrize("values", ["default", "ingress-tls"])
def test_the_rendered_command_parses_with_the_real_cli(values: str) -> None:
    from tuneship.cli.main import app

    result = render(values)
    args = console_container(result)["args"]
    answer = CliRunner().invoke(app, [*args, "--print-config"])
    assert answer.exit_code == 0, answer.output
    config = dict(line.split("=", 1) for line in answer.output.splitlines())
    assert config["controller"] == f"{result.fullname}-controller:50051"
    assert (config["host"], config["port"]) == ("0.0.0.0", "8080")
    assert config["secure_cookie"] == str(values == "ingress-tls")


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[TlsCluster]:
    """A controller with the user token ``TOKEN`` and mutual TLS; its certificate is
    the chart's one certificate for every server and client (``tls.secretName``)."""
    ca = CertificateAuthority(tmp_path / "pki")
    cert, key = ca.issue("chart")  # 127.0.0.1 and localhost, server and client use
    auth = AuthSettings(api_tokens=(TOKEN,), tls=ServerTls(cert, key, client_ca=ca.cert))
    stages = {name: ScriptedStage(name) for name in STAGES}
    (tmp_path / "cluster").mkdir()
    cluster = start_cluster(tmp_path / "cluster", stages, {}, auth=auth,
                            client_tls=ClientTls(ca.cert, cert, key))  # fmt: skip
    yield cluster, ca, (cert, key)
    cluster.stop()


def pod_files(
    pod: dict[str, Any], container: dict[str, Any], root: Path, secrets: dict[str, dict[str, Path]]
) -> dict[str, str]:
    """The container's environment with every path under one of its mounts moved under
    ``root``, and each Secret volume's items written there (``secrets``: Secret name →
    key → the local file that stands for it)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = env_of(container)
    for mount in container["volumeMounts"]:
        local = root / mount["mountPath"].strip("/")
        local.mkdir(parents=True, exist_ok=True)
        secret = volumes[mount["name"]].get("secret")
        if secret is not None:
            for item in secret["items"]:
                source = secrets[secret["secretName"]][item["key"]]
                (local / item["path"]).write_bytes(source.read_bytes())
        for name, value in env.items():
            if value == mount["mountPath"] or value.startswith(mount["mountPath"] + "/"):
                env[name] = str(local) + value.removeprefix(mount["mountPath"])
    return env


def cookies(response: httpx.Response) -> dict[str, Any]:
    """The cookies a response sets, by name, as parsed morsels."""
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    return dict(jar)


def test_the_rendered_console_runs_and_logs_in_through_mutual_tls(
    tls_cluster: TlsCluster, tmp_path: Path
) -> None:
    """The console exactly as the chart runs it behind its Ingress with mutual TLS to
    the controller: the health check answers, every page asks for a login although
    the browser comes from loopback, the cookies are Secure, and a person's API token
    logs in through the controller (a wrong one does not)."""
    cluster, ca, (cert, key) = tls_cluster
    result = render({**TLS, **INGRESS})
    pod, container = console_pod(result), console_container(result)
    files = {"tuneship-tls": {"ca.crt": ca.cert, "tls.crt": cert, "tls.key": key}}
    rendered_env = pod_files(pod, container, tmp_path / "pod", files)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESHIP_")}
    env.update(rendered_env)
    args = list(container["args"])
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    args[args.index("--controller") + 1] = cluster.controller.address  # 127.0.0.1:<port>
    assert option(args, "--host") == "0.0.0.0" and "--secure-cookie" in args
    log = (tmp_path / "console.log").open("wb")
    process = subprocess.Popen([TUNESHIP, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                               cwd=tmp_path)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10, follow_redirects=False) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    health = http.get("/healthz")
                    break
                except httpx.TransportError:
                    assert process.poll() is None, (tmp_path / "console.log").read_text()
                    assert time.monotonic() < deadline, "the console did not start"
                    time.sleep(0.2)
            assert (health.status_code, health.text) == (200, "ok\n")
            assert http.get("/").status_code == 401
            form = http.get("/login")
            login_cookie = cookies(form)["tuneship_login"]
            assert login_cookie["secure"] and login_cookie["httponly"]
            nonce = login_cookie.value
            sent = {"Cookie": f"tuneship_login={nonce}"}
            wrong = http.post("/login", data={"nonce": nonce, "token": "not-the-token"},
                              headers=sent)  # fmt: skip
            assert wrong.status_code == 401 and "tuneship_console" not in cookies(wrong)
            login = http.post("/login", data={"nonce": nonce, "token": TOKEN.reveal()},
                              headers=sent)  # fmt: skip
            assert login.status_code == 303, login.text
            session = cookies(login)["tuneship_console"]
            assert session["secure"] and session["httponly"]
            page = http.get("/", headers={"Cookie": f"tuneship_console={session.value}"})
            assert page.status_code == 200 and "Log out" in page.text
    finally:
        process.terminate()
        code = process.wait(timeout=20)
        log.close()
    assert code == 0, (tmp_path / "console.log").read_text()
    assert f"(controller {cluster.controller.address})" in (tmp_path / "console.log").read_text()
