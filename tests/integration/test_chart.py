"""The Helm chart: lint, schema, every manifest against the Kubernetes schemas of the
oldest and newest supported versions, and the contract of docs/kubernetes.md.

Rendered with Helm's own engine (helm-python-sdk), offline, for every values file of
the matrix (the chart's defaults and examples/helm/*.yaml).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from tuneship.testing.helm import (
    CHART_DIR,
    NAMESPACE,
    NEWEST,
    OLDEST,
    REPO,
    SERVICE_MONITOR,
    PodTemplate,
    Rendered,
    container_env,
    lint,
    load_values,
    render,
    selector_matches,
    values_files,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
"""Kinds kubernetes-validate has no schema for: skipped, and only these."""
VALUES = list(values_files())
STAGE_COMPONENTS = {"train": "trainer", "merge": "merger", "export": "converter",
                    "publish": "serving"}  # fmt: skip
CONTRACT = (REPO / "docs" / "kubernetes.md").read_text()


def contract_table(heading: str) -> list[list[str]]:
    """The rows of the table under ``### heading`` in docs/kubernetes.md, cells stripped."""
    section = CONTRACT.split(f"### {heading}", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    """Every values file rendered once, as a first install on the oldest version, with
    the ServiceMonitor CRD present (so that the example enabling it renders one)."""
    return {
        name: render(name, kube_version=f"v{OLDEST}", api_versions=[SERVICE_MONITOR])
        for name in VALUES
    }


# --- lint, schema ---------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUES)
def test_lint_is_clean_on_oldest_and_newest_kubernetes(name: str) -> None:
    for version in (OLDEST, NEWEST):
        assert lint(load_values(name), f"v{version}") == [], (name, version)


def test_chart_declares_the_oldest_validated_version() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST}-0"
    assert {OLDEST, NEWEST} <= set(kubernetes_validate.utils.all_versions())


@pytest.mark.parametrize(
    ("values", "at", "message"),
    [
        ({"controler": {}}, "''", "additional properties 'controler' not allowed"),
        ({"controller": {"replicass": 1}}, "'/controller'", "'replicass' not allowed"),
        ({"serving": {"ollama": {"keepalive": "1h"}}}, "'/serving/ollama'", "'keepalive'"),
        ({"merger": {"replicas": "two"}}, "'/merger/replicas'", "want integer"),
        ({"converter": {"replicas": -1}}, "'/converter/replicas'", "minimum"),
        ({"providers": {"train": "k8s-pod"}}, "'/providers/train'", "must be one of"),
        ({"serving": {"ollama": {"image": {"tag": "latest"}}}}, "'/serving/ollama/image/tag'", ""),
        ({"controller": {"image": {"tag": "latest"}}}, "'/controller/image/tag'", ""),
        ({"networkPolicy": {"apiServer": {"cidrs": ["any"]}}},
         "'/networkPolicy/apiServer/cidrs/0'", ""),
        ({"logs": {"format": "yaml"}}, "'/logs/format'", "must be one of"),
        ({"logs": {"level": "verbose"}}, "'/logs/level'", "must be one of"),
        ({"logs": {"colour": True}}, "'/logs'", "'colour' not allowed"),
    ],
)  # fmt: skip
def test_schema_refuses_bad_values_and_names_the_key(
    values: dict[str, Any], at: str, message: str
) -> None:
    with (
        helm_python.Chart.load(CHART_DIR) as chart,
        pytest.raises(helm_python.HelmValuesError) as schema_error,
    ):
        chart.validate_schema(values)
    assert f"at {at}" in str(schema_error.value) and message in str(schema_error.value)
    with pytest.raises(helm_python.HelmValuesError) as install_error:  # what install does
        render(values)
    assert f"at {at}" in str(install_error.value)


def test_schema_refuses_unknown_keys_at_every_object_level() -> None:
    """Every object with declared properties refuses others; free-form maps (labels,
    annotations, nodeSelector, resource names) and pass-through Kubernetes affinity
    terms are the only objects without ``additionalProperties: false``."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        schema = chart.schema
    assert schema is not None
    open_objects = []

    def visit(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(path)
            for key, value in node.items():
                visit(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                visit(value, f"{path}/{index}")

    visit(schema, "")
    assert open_objects == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"minio": {"enabled": False}}, "set s3.endpoint"),
        ({"minio": {"enabled": False}, "s3": {"endpoint": "s3.example.com:443"}},
         "s3.existingSecret is required"),
        ({"minio": {"enabled": False},
          "s3": {"endpoint": "s3.example.com:443", "existingSecret": "s3"}},
         "networkPolicy.s3.cidrs is required"),
        ({"controller": {"database": {"existingSecret": "pg"}}},
         "networkPolicy.database.cidrs is required"),
        ({"serving": {"replicas": 3}}, "ReadWriteOnce"),
        ({"providers": {"publish": "static"}}, "set staticWorkers.publish"),
        ({"staticWorkers": {"train": "10.0.0.5:50051"}}, "staticWorkers.train is set"),
        ({"ingress": {"enabled": True}}, "ingress.tlsSecretName"),
    ],
)  # fmt: skip
def test_inconsistent_values_fail_with_the_keys_to_set(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmError) as error:
        render(values)
    assert message in str(error.value)


def test_values_yaml_has_a_comment_above_every_key() -> None:
    """Every key the schema declares is documented in values.yaml by the line above it
    (keys inside free-form maps and list items are data, not settings)."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        schema = chart.schema
    assert schema is not None
    defs = schema["$defs"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[1]]
        return node

    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, dict[str, Any]]] = [(-1, schema)]
    undocumented = []
    in_list_at: int | None = None
    for number, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("- "):
            in_list_at = indent if in_list_at is None else min(in_list_at, indent)
            continue
        if in_list_at is not None and indent > in_list_at:
            continue
        in_list_at = None
        match = re.match(r"([A-Za-z0-9_.-]+):", text)
        assert match, f"values.yaml:{number + 1}: {line!r}"
        while stack[-1][0] >= indent:
            stack.pop()
        parent = resolve(stack[-1][1])
        declared = parent.get("properties", {})
        if match.group(1) in declared:
            if not lines[number - 1].strip().startswith("#"):
                undocumented.append(f"values.yaml:{number + 1}: {match.group(1)}")
            stack.append((indent, resolve(declared[match.group(1)])))
        else:
            assert "properties" not in parent, f"values.yaml:{number + 1}: undeclared key"
            stack.append((indent, {}))
    assert undocumented == []


# --- every manifest against the Kubernetes schemas -------------------------------------


@pytest.mark.parametrize("name", VALUES)
def test_every_manifest_validates_strictly_on_oldest_and_newest(
    rendered: dict[str, Rendered], name: str
) -> None:
    """The manifests, and the Job manifests inside the jobs ConfigMap, against the
    strict schemas (unknown fields refused). The counts print with ``-s``."""
    result = rendered[name]
    documents = [(f"{m['kind']}/{m['metadata']['name']}", m) for m in result.manifests]
    documents += [
        (f"jobs ConfigMap {stage}.yaml", job) for stage, job in result.job_templates().items()
    ]
    for version in (OLDEST, NEWEST):
        counts: Counter[str] = Counter()
        for where, manifest in documents:
            if (manifest["apiVersion"], manifest["kind"]) in CRD_KINDS:
                counts["skipped (CRD)"] += 1
                continue
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                pytest.fail(f"{name} on {version}: {where}: {path}: {error.message}")
            counts["validated"] += 1
        print(f"\n[kubernetes {version}] {name}: {dict(counts)} "
              f"({len(result.job_templates())} of them Job templates)")  # fmt: skip
        assert counts["validated"] == len(documents) - counts["skipped (CRD)"]


def test_the_validation_is_strict(rendered: dict[str, Rendered]) -> None:
    """An unknown field fails, so the validations above prove something."""
    deployment = rendered["default"].get("Deployment", "controller")
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(typo, OLDEST, strict=True)


def test_service_monitor_only_where_its_crd_exists() -> None:
    values = load_values("production-gpu")
    assert values["metrics"]["serviceMonitor"]["enabled"]
    assert render(values, api_versions=[SERVICE_MONITOR]).has("ServiceMonitor", "controller")
    assert not render(values).has("ServiceMonitor", "controller")
    assert not render("default", api_versions=[SERVICE_MONITOR]).all("ServiceMonitor")


# --- pods: restricted, probes, resources, images ---------------------------------------


def tuneship_servers(pod: PodTemplate) -> list[dict[str, Any]]:
    """The containers that run ``tuneship serve COMPONENT`` (Ollama's ``serve`` is not)."""
    components = {"controller", *STAGE_COMPONENTS.values()}
    return [
        c for c in pod.containers() if c.get("args", [])[:2] in (["serve", x] for x in components)
    ]


@pytest.mark.parametrize("name", VALUES)
def test_every_pod_meets_the_restricted_profile(rendered: dict[str, Rendered], name: str) -> None:
    pods = rendered[name].pod_templates()
    assert {"controller", "trainer", "converter", "serving", "test"} <= {p.component for p in pods}
    for pod in pods:
        spec = pod.spec
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, pod.owner
        assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (
            65532, 65532, 65532,
        ), pod.owner  # fmt: skip
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, pod.owner
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec), pod.owner
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v], pod.owner
        tokens = spec["automountServiceAccountToken"]
        assert tokens is (pod.component == "controller"), pod.owner
        mounted = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in pod.containers():
            where = f"{pod.owner} {container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert not context.get("privileged"), where
            assert not [p for p in container.get("ports", []) if "hostPort" in p], where
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in mounted, f"{where}: /tmp is not an emptyDir"
            home = {e["name"]: e.get("value") for e in container.get("env", [])}.get("HOME")
            assert home and any(home.startswith(path) for path in mounts), f"{where}: HOME"


@pytest.mark.parametrize("name", VALUES)
def test_tuneship_servers_have_grpc_probes_and_resources(
    rendered: dict[str, Rendered], name: str
) -> None:
    servers = [(p, c) for p in rendered[name].pod_templates() for c in tuneship_servers(p)]
    assert {p.component for p, _ in servers} >= {"controller", "trainer", "converter", "serving"}
    for pod, container in servers:
        where = f"{pod.owner} {container['name']}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": 50051}, f"{where} {probe}"
        assert {"name": "grpc", "containerPort": 50051, "protocol": "TCP"} in container["ports"]
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), where
        assert "memory" in resources["limits"], where
    for pod in rendered[name].pod_templates():
        for container in pod.containers():
            assert container.get("resources", {}).get("limits", {}).get("memory"), pod.owner


@pytest.mark.parametrize("name", VALUES)
def test_every_image_is_pinned(rendered: dict[str, Rendered], name: str) -> None:
    images = {c["image"] for p in rendered[name].pod_templates() for c in p.containers()}
    assert images, name
    for image in images:
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag and tag not in ("", "latest"), image
    appversion = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    assert f"ghcr.io/tuneship/tuneship:{appversion}" in images
    assert f"ghcr.io/tuneship/tuneship-convert:{appversion}" in images
    assert f"ghcr.io/tuneship/tuneship-train:{appversion}" in images
    assert any(i.startswith("ollama/ollama:") for i in images)


def test_a_digest_replaces_the_tag() -> None:
    digest = "sha256:" + "ab" * 32
    result = render({"converter": {"image": {"digest": digest}}})
    spec = result.get("Deployment", "converter")["spec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == f"ghcr.io/tuneship/tuneship-convert@{digest}"


# --- labels, Services, RBAC ------------------------------------------------------------


@pytest.mark.parametrize("name", VALUES)
def test_every_object_carries_the_contract_labels(rendered: dict[str, Rendered], name: str) -> None:
    result = rendered[name]
    objects = [(m, "Helm") for m in result.manifests]
    # The Jobs made from the templates are created by the controller, not by Helm.
    objects += [(job, "tuneship-controller") for job in result.job_templates().values()]
    for manifest, manager in objects:
        labels = manifest["metadata"]["labels"]
        where = f"{manifest['kind']}/{manifest['metadata'].get('name', '(Job template)')}"
        assert labels["app.kubernetes.io/name"] == "tuneship", where
        assert labels["app.kubernetes.io/instance"] == result.release, where
        assert labels["app.kubernetes.io/managed-by"] == manager, where
        assert labels["app.kubernetes.io/version"] and labels["helm.sh/chart"], where
        assert labels["app.kubernetes.io/component"], where
    for pod in result.pod_templates():
        assert pod.component in {*STAGE_COMPONENTS.values(), "controller", "console",
                                 "minio", "minio-bootstrap", "test"}, pod.owner  # fmt: skip


@pytest.mark.parametrize("name", VALUES)
def test_every_selector_picks_exactly_its_own_pods(
    rendered: dict[str, Rendered], name: str
) -> None:
    """Services and PodDisruptionBudgets select the pods of their component only: never
    a Job pod, the test pod, the bucket bootstrap or another pool."""
    result = rendered[name]
    pods = result.pod_templates()
    selectors = [(s, s["spec"]["selector"]) for s in result.all("Service")]
    selectors += [
        (b, b["spec"]["selector"]["matchLabels"]) for b in result.all("PodDisruptionBudget")
    ]
    selectors += [(w, w["spec"]["selector"]["matchLabels"])
                  for kind in ("Deployment", "StatefulSet") for w in result.all(kind)]  # fmt: skip
    for owner, labels in selectors:
        component = owner["metadata"]["labels"]["app.kubernetes.io/component"]
        picked = {p.owner for p in pods if selector_matches({"matchLabels": labels}, p.labels)}
        workload = {p.owner for p in pods if p.component == component
                    and p.owner.split("/")[0] in ("Deployment", "StatefulSet")}  # fmt: skip
        assert picked == workload and len(workload) == 1, (owner["metadata"]["name"], picked)


@pytest.mark.parametrize("name", VALUES)
def test_services_are_named_and_shaped_as_the_contract_says(
    rendered: dict[str, Rendered], name: str
) -> None:
    result = rendered[name]
    controller = result.get("Service", "controller")
    assert [(p["name"], p["port"]) for p in controller["spec"]["ports"]] == [
        ("grpc", 50051), ("metrics", 9090)
    ]  # fmt: skip
    env = result.env("Deployment", "controller", "controller")
    pools = dict(pair.split("=") for pair in env.get("TUNESHIP_POOLS", "").split(",") if pair)
    for stage, service_name in pools.items():
        service = result.get("Service", service_name)
        assert service_name == f"{result.fullname}-{STAGE_COMPONENTS[stage]}"
        assert service["spec"]["clusterIP"] == "None", service_name
        assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("grpc", 50051)]


def test_role_is_exactly_the_contract_table(rendered: dict[str, Rendered]) -> None:
    expected = {
        (group.strip("`").replace('""', ""), resource.strip("`"), frozenset(verbs.split(", ")))
        for group, resource, verbs, _why in contract_table("RBAC")
    }
    for name, result in rendered.items():
        rules = result.get("Role", "controller")["rules"]
        got = {
            (group, resource, frozenset(rule["verbs"]))
            for rule in rules
            for group in rule["apiGroups"]
            for resource in rule["resources"]
        }
        assert got == expected, name
        assert not any("secrets" in rule["resources"] for rule in rules)
        assert not result.all("ClusterRole") and not result.all("ClusterRoleBinding")
        binding = result.get("RoleBinding", "controller")
        assert binding["roleRef"]["name"] == f"{result.fullname}-controller"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": NAMESPACE,
                                        "name": f"{result.fullname}-controller"}]  # fmt: skip
        controller = result.get("Deployment", "controller")["spec"]["template"]["spec"]
        assert controller["serviceAccountName"] == f"{result.fullname}-controller"


# --- the controller's environment and the Job templates --------------------------------


def test_controller_env_is_the_contracts_by_default(rendered: dict[str, Rendered]) -> None:
    result = rendered["default"]
    env = result.env("Deployment", "controller", "controller")
    fullname = result.fullname
    assert (
        env["TUNESHIP_PROVIDERS"] == "train=k8s-job,merge=k8s-pool,export=k8s-pool,publish=k8s-pool"
    )
    assert env["TUNESHIP_K8S_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["TUNESHIP_JOB_TEMPLATES"] == "/etc/tuneship/jobs"
    assert env["TUNESHIP_POOLS"] == (
        f"merge={fullname}-merger,export={fullname}-converter,publish={fullname}-serving"
    )
    assert env["TUNESHIP_POOL_CAPACITY"] == "merge=1,export=1,publish=4"
    assert env["TUNESHIP_LIMITS"] == "train=4"
    assert env["TUNESHIP_UNSCHEDULABLE_TIMEOUT_S"] == "900"
    assert env["TUNESHIP_STATE_URL"] == "sqlite:////var/lib/tuneship/state.db"
    assert env["TUNESHIP_STORE"] == "s3://tuneship"
    assert env["TUNESHIP_S3_ENDPOINT"] == f"{fullname}-minio:9000"
    assert env["TUNESHIP_S3_SECURE"] == "0"
    for key in ("TUNESHIP_S3_ACCESS_KEY", "TUNESHIP_S3_SECRET_KEY"):
        assert env[key]["secretKeyRef"]["name"] == f"{fullname}-s3"
    documented = {row[0].strip("`") for row in contract_table("Controller environment")}
    assert documented - set(env) == {"TUNESHIP_WORKERS"}  # only for static stages
    spec = result.get("Deployment", "controller")["spec"]
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})
    pod = spec["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/tuneship/jobs"]]["configMap"]["name"] == f"{fullname}-jobs"
    claim = volumes[mounts["/var/lib/tuneship"]]["persistentVolumeClaim"]["claimName"]
    assert result.has("PersistentVolumeClaim", claim)


def test_external_store_and_database(rendered: dict[str, Rendered]) -> None:
    result = rendered["production-gpu"]
    env = result.env("Deployment", "controller", "controller")
    assert env["TUNESHIP_STATE_URL"] == {
        "secretKeyRef": {"name": "tuneship-postgres", "key": "url"}
    }
    assert env["TUNESHIP_STORE"] == "s3://tuneship-artifacts"
    assert (env["TUNESHIP_S3_ENDPOINT"], env["TUNESHIP_S3_SECURE"]) == (
        "s3.storage.internal:443",
        "1",
    )
    assert env["TUNESHIP_S3_ACCESS_KEY"]["secretKeyRef"]["name"] == "tuneship-s3"
    assert not result.all("StatefulSet")
    # The only generated Secret: the tokens (docs/security.md), no store credentials.
    assert [s["metadata"]["name"] for s in result.all("Secret")] == [f"{result.fullname}-auth"]
    assert not result.has("PersistentVolumeClaim", "controller")


@pytest.mark.parametrize("name", VALUES)
def test_pool_capacity_is_one_value_in_two_places(rendered: dict[str, Rendered], name: str) -> None:
    result = rendered[name]
    env = result.env("Deployment", "controller", "controller")
    capacities = dict(p.split("=") for p in env["TUNESHIP_POOL_CAPACITY"].split(","))
    values = load_values(name)
    for stage, capacity in capacities.items():
        component = STAGE_COMPONENTS[stage]
        pool = result.env("Deployment", component, component)
        assert pool["TUNESHIP_CAPACITY"] == capacity, (name, stage)
        assert capacity == str(values.get(component, {}).get("capacity", capacity))
    providers = dict(p.split("=") for p in env["TUNESHIP_PROVIDERS"].split(","))
    pools = {STAGE_COMPONENTS[s] for s, p in providers.items() if p == "k8s-pool"}
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]
                   for d in result.all("Deployment")}  # fmt: skip
    assert deployments == pools | {"controller", "console"}
    assert set(result.job_templates()) == {s for s, p in providers.items() if p == "k8s-job"}


@pytest.mark.parametrize("name", VALUES)
def test_job_templates_are_the_contracts(rendered: dict[str, Rendered], name: str) -> None:
    result = rendered[name]
    values = load_values(name)
    for stage, job in result.job_templates().items():
        component = STAGE_COMPONENTS[stage]
        assert "name" not in job["metadata"] and "namespace" not in job["metadata"]
        spec = job["spec"]
        assert spec["backoffLimit"] == 0
        assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] >= 0
        assert spec["podFailurePolicy"] == {"rules": [
            {"action": "FailJob",
             "onExitCodes": {"containerName": "worker", "operator": "In", "values": [3]}},
            {"action": "Ignore",
             "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]}  # fmt: skip
        queue = values.get("kueue", {}).get("queueName")
        assert job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == queue
        assert "suspend" not in spec  # the controller suspends Jobs for Kueue
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert pod["automountServiceAccountToken"] is False
        assert pod["terminationGracePeriodSeconds"] >= 60
        [worker] = pod["containers"]
        assert worker["name"] == "worker"
        assert worker["args"] == ["serve", component, "--once", "--host", "$(POD_IP)",
                                  "--port", "50051"]  # fmt: skip
        assert worker["ports"] == [{"name": "grpc", "containerPort": 50051, "protocol": "TCP"}]
        env = container_env(PodTemplate(stage, {}, pod), "worker")
        assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert {"TUNESHIP_STORE", "TUNESHIP_S3_ENDPOINT", "TUNESHIP_S3_ACCESS_KEY"} <= set(env)
        assert "TUNESHIP_TASK_ID" not in env  # added by the controller per attempt
        shm = [m["name"] for m in worker["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        [volume] = [v for v in pod["volumes"] if v["name"] in shm]
        assert volume["emptyDir"]["medium"] == "Memory"
        gpus = worker["resources"]["limits"].get("nvidia.com/gpu")
        wanted = values.get(component, {}).get("gpu", {}).get("count", 1)
        assert gpus == wanted, (name, stage)
        for key in ("nodeSelector", "tolerations"):
            assert pod.get(key) == (values.get(component, {}).get(key) or None), (name, key)


def test_a_gpu_merge_is_a_job_and_no_pool(rendered: dict[str, Rendered]) -> None:
    result = rendered["kueue"]
    env = result.env("Deployment", "controller", "controller")
    assert (
        env["TUNESHIP_PROVIDERS"] == "train=k8s-job,merge=k8s-job,export=k8s-pool,publish=k8s-pool"
    )
    assert env["TUNESHIP_POOLS"].startswith("export=")
    assert env["TUNESHIP_LIMITS"] == "train=16,merge=4"
    assert not result.has("Deployment", "merger") and not result.has("Service", "merger")
    merge = result.job_templates()["merge"]
    assert merge["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "tuneship-batch"


def test_a_static_stage_gets_an_address_and_no_workload() -> None:
    result = render({
        "providers": {"publish": "static"},
        "staticWorkers": {"publish": "ollama-box.lan:50051"},
        "networkPolicy": {"staticWorkers": {"cidrs": ["192.168.1.0/24"]}},
    })  # fmt: skip
    env = result.env("Deployment", "controller", "controller")
    assert env["TUNESHIP_WORKERS"] == "publish=ollama-box.lan:50051"
    assert "publish=static" in env["TUNESHIP_PROVIDERS"]
    assert "publish" not in env["TUNESHIP_POOLS"] and "publish" not in env["TUNESHIP_POOL_CAPACITY"]
    assert not result.has("Deployment", "serving")


def test_serving_runs_ollama_as_a_loopback_sidecar(rendered: dict[str, Rendered]) -> None:
    for name, result in rendered.items():
        pod = result.get("Deployment", "serving")["spec"]["template"]["spec"]
        [ollama] = pod["initContainers"]
        assert ollama["restartPolicy"] == "Always", name
        assert ollama["image"].startswith("ollama/ollama:")
        env = container_env(PodTemplate(name, {}, pod), "ollama")
        assert env["OLLAMA_HOST"] == "127.0.0.1:11434"
        assert env["OLLAMA_KEEP_ALIVE"]
        assert "ports" not in ollama  # nothing outside the pod may reach it
        serving = container_env(PodTemplate(name, {}, pod), "serving")
        assert serving["OLLAMA_HOST"] == "http://127.0.0.1:11434"
        assert serving["TUNESHIP_SERVING_BACKEND"] == "ollama"
        models = {v["name"]: v for v in pod["volumes"]}["models"]
        persistent = load_values(name).get("serving", {}).get("ollama", {}).get("models", {})
        if persistent.get("persistence", {}).get("enabled", True):
            assert result.has("PersistentVolumeClaim", models["persistentVolumeClaim"]["claimName"])
        else:
            assert "emptyDir" in models


def test_bundled_minio_is_pinned_and_bootstrapped_by_a_hook() -> None:
    result = render("default")
    minio = result.get("StatefulSet", "minio")
    [container] = minio["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.[0-9TZ-]+", container["image"])
    assert minio["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    job = result.get("Job", "minio-bootstrap")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    [mc] = job["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"quay\.io/minio/mc:RELEASE\.[0-9TZ-]+", mc["image"])
    assert result.get("Secret", "minio-root")["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep"
    }


def test_helm_test_pod_lists_pipelines_on_the_controller(rendered: dict[str, Rendered]) -> None:
    result = rendered["default"]
    pod = result.get("Pod", "test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["args"] == [
        "list", "--controller", f"{result.fullname}-controller:50051"
    ]  # fmt: skip


def tuneship_containers(result: Rendered) -> dict[str, dict[str, Any]]:
    """``owner/container`` -> every container that runs tuneship: the servers (a Job
    template's included) and the helm test pod's ``tuneship list``."""
    return {
        f"{pod.owner}/{c['name']}": c
        for pod in result.pod_templates()
        for c in pod.containers()
        if c in tuneship_servers(pod) or c.get("args", [""])[0] == "list"
    }


def test_the_log_format_and_level_reach_every_tuneship_container() -> None:
    for container in tuneship_containers(render("default")).values():
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (env["TUNESHIP_LOG_FORMAT"], env["TUNESHIP_LOG_LEVEL"]) == ("text", "info")
    # A GPU merge: the merge Job template as well as the train one.
    logs = {"logs": {"format": "json", "level": "debug"}, "merger": {"gpu": {"enabled": True}}}
    result = render(logs)
    found = tuneship_containers(result)
    owners = {name.rsplit("/", 1)[0].split("/", 1)[1] for name in found}
    fullname = result.fullname
    assert owners == {f"{fullname}-controller", f"{fullname}-converter", f"{fullname}-serving",
                      f"{fullname}-test", f"{fullname}-jobs:train.yaml",
                      f"{fullname}-jobs:merge.yaml"}  # fmt: skip
    for name, container in found.items():
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (env["TUNESHIP_LOG_FORMAT"], env["TUNESHIP_LOG_LEVEL"]) == ("json", "debug"), name
    for pod in result.pod_templates():  # nor does anything else get them (MinIO, Ollama)
        for container in pod.containers():
            if f"{pod.owner}/{container['name']}" not in found:
                assert "TUNESHIP_LOG_FORMAT" not in str(container.get("env")), pod.owner


def test_ingress_serves_grpc_over_tls(rendered: dict[str, Rendered]) -> None:
    ingress = rendered["ingress-tls"].get("Ingress", "controller")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert ingress["spec"]["tls"] == [
        {"hosts": ["tuneship.example.com"], "secretName": "tuneship-tls"}
    ]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {
        "name": f"{rendered['ingress-tls'].fullname}-controller",
        "port": {"name": "grpc"},
    }
    assert not rendered["default"].all("Ingress")


def test_notes_tell_how_to_submit_a_first_pipeline(rendered: dict[str, Rendered]) -> None:
    notes = rendered["default"].notes
    assert f"port-forward service/{rendered['default'].fullname}-controller 50051:50051" in notes
    assert "tuneship submit" in notes
    assert "pod-security.kubernetes.io/enforce=restricted" in notes


# --- the controller reads what the chart renders --------------------------------------


@pytest.mark.parametrize("name", VALUES)
def test_the_controller_accepts_the_rendered_environment_and_jobs(
    rendered: dict[str, Rendered], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller's own settings reader takes the rendered env and the mounted Job
    templates; each Job it would create from them validates on both versions."""
    from tuneship.cli.kube_env import kube_settings
    from tuneship.common.settings import load_env
    from tuneship.controller.providers.kube import job_manifest

    result = rendered[name]
    jobs_dir = tmp_path / "jobs"  # what the ConfigMap volume holds
    jobs_dir.mkdir()
    if result.has("ConfigMap", "jobs"):
        for key, text in result.get("ConfigMap", "jobs")["data"].items():
            (jobs_dir / key).write_text(text)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
    }))  # fmt: skip
    env = {
        key: value if isinstance(value, str) else NAMESPACE
        for key, value in result.env("Deployment", "controller", "controller").items()
    }
    env.update(TUNESHIP_JOB_TEMPLATES=str(jobs_dir), KUBECONFIG=str(kubeconfig))
    for key, value in list(env.items()):  # the token files the auth Secret volume holds
        if value.startswith("/etc/tuneship/auth/"):
            (tmp_path / key).write_text("a-token\n")
            env[key] = str(tmp_path / key)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    values = load_env(env).values  # strict: every rendered variable parses
    providers = values.providers
    settings = kube_settings(values, env)
    assert settings is not None
    assert settings.namespace == NAMESPACE
    assert set(settings.job_templates) == {s for s, p in providers.items() if p == "k8s-job"}
    assert set(settings.pools) == set(settings.pool_capacity)
    assert values.limits
    for stage, template in settings.job_templates.items():
        job = job_manifest(template, stage, f"pipeline-1/{stage}/attempt-1", NAMESPACE)
        for version in (OLDEST, NEWEST):
            kubernetes_validate.validate(job, version, strict=True)
