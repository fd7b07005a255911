"""tuneship installed by its chart on the fake Kubernetes API, as a cluster runs it.

The chart is rendered with Helm's engine; its workloads (the pools' Deployments and
Services, ConfigMaps, Secrets) are applied to ``FakeKube``, whose kubelet runs each pod
as a real ``tuneship serve ...`` process on its own loopback IP. The controller runs as
a real ``tuneship serve controller`` process with the environment the chart gives its
Deployment, a kubeconfig instead of the in-cluster token, and the jobs ConfigMap's
files where the chart mounts them. Only what no test machine has is swapped: the
object store is a local directory (no MinIO here), serving uses the pinned llama-server
(no Ollama; the Ollama sidecar's image runs an idle process), and paths under a pod's
read-only root point into the pod's own directory. The fake kubelet mounts no volumes:
the files of the Secrets the chart mounts (the tokens) are written under the test's
directory and the variables that name them point there, for the controller and for
every pod.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneship.client import PipelineClient, WatchEvent
from tuneship.common.errors import Unavailable
from tuneship.common.settings import Settings
from tuneship.testing.helm import NAMESPACE, Rendered, render
from tuneship.testing.kube import FakeKube, Kubelet

TUNESHIP = str(Path(sys.executable).parent / "tuneship")
IDLE = [sys.executable, "-c", "import time\nwhile True: time.sleep(60)"]
S3_SECRET = "s3-credentials"

TEST_VALUES: dict[str, Any] = {
    "minio": {"enabled": False},
    "s3": {"endpoint": "s3.example.invalid:9000", "existingSecret": S3_SECRET},
    "networkPolicy": {"s3": {"cidrs": ["10.0.0.0/8"]}},
    "console": {"enabled": False},
}
"""An external S3 by values (the processes use a local store instead: see above). No
console: it listens on every interface (0.0.0.0:8080), which pods sharing this
machine's network cannot each do; tests/integration/test_chart_console.py runs it."""


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, dicts merged key by key (as Helm merges values)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ChartCluster:
    """A rendered release running on ``kube``; ``stop`` ends every process."""

    kube: FakeKube
    rendered: Rendered
    root: Path
    controller_env: dict[str, str]
    controller: subprocess.Popen[bytes] | None = None
    port: int = field(default_factory=free_port)
    user_token: str | None = None
    """The first token of the chart's user API Secret (None: auth disabled)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_controller(self) -> PipelineClient:
        """Start the controller process (again) and wait until it answers."""
        log = (self.root / "controller.log").open("ab")
        self.controller = subprocess.Popen(
            [TUNESHIP, "serve", "controller", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.controller_env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
        )  # fmt: skip
        client = PipelineClient(self.address, timeout_s=10, token=self.user_token)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.list(page_size=1)
                return client
            except Exception as error:
                if self.controller.poll() is not None or time.monotonic() > deadline:
                    log_text = self.controller_log()
                    raise AssertionError(f"controller did not start:\n{log_text}") from error
                time.sleep(0.2)

    def kill_controller(self) -> None:
        """SIGKILL: nothing is cleaned up, as when a node dies."""
        assert self.controller is not None
        self.controller.send_signal(signal.SIGKILL)
        self.controller.wait(timeout=30)

    def controller_log(self) -> str:
        path = self.root / "controller.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.controller is not None and self.controller.poll() is None:
            self.controller.terminate()
            try:
                self.controller.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.controller.kill()
        self.kube.stop()


def deploy_chart(
    root: Path,
    values: dict[str, Any] | None = None,
    *,
    controller_env: dict[str, str] | None = None,
    gpus: int = 1,
    kueue_hold: bool = False,
    grace_cap_s: float = 30.0,
    pod_env: dict[str, str] | None = None,
) -> ChartCluster:
    """Render the chart with ``values`` (over ``TEST_VALUES``), start the fake API with
    the chart's Role and apply the workloads; ``start_controller`` starts the controller.
    ``pod_env`` adds to (or replaces) what every pod's processes see."""
    rendered = render(merged(TEST_VALUES, values or {}))
    mounted = secret_files(rendered, root / "secrets")
    store = root / "store"
    store.mkdir(parents=True, exist_ok=True)
    pod_env = {
        "TUNESHIP_STORE": f"local:{store}",
        "TUNESHIP_CACHE_DIR": str(Settings.from_env().cache_dir),
        "TUNESHIP_SERVING_BACKEND": "llama-server",
        # A pod's writable paths are its own volumes: here, its own directory.
        "TUNESHIP_WORK_DIR": "work",
        "HOME": "home",
        "XDG_CACHE_HOME": "home/.cache",
        "HF_HOME": "home/.cache/huggingface",
        "TUNESHIP_SERVING_SYNC_S": "2",
        **mounted.worker_env,
        **(pod_env or {}),
    }
    kubelet = Kubelet(
        images={"*": [TUNESHIP], "ollama/ollama": IDLE},
        env=pod_env, grace_cap_s=grace_cap_s, workdir=root / "pods",
    )  # fmt: skip
    role = rendered.get("Role", "controller")
    kube = FakeKube(NAMESPACE, role=role, kubelet=kubelet, gpus=gpus, kueue_hold=kueue_hold)
    kube.start()
    kube.apply([credentials_secret(), *workloads(rendered)])
    cluster = ChartCluster(kube, rendered, root, {}, user_token=mounted.user_token)
    cluster.controller_env = controller_environment(rendered, kube, root, store)
    cluster.controller_env.update(mounted.controller_env)
    cluster.controller_env.update(controller_env or {})
    return cluster


@dataclass(frozen=True)
class SecretFiles:
    """The chart's mounted Secret files, written locally, and the variables to use."""

    controller_env: dict[str, str]
    worker_env: dict[str, str]
    user_token: str | None


def secret_files(rendered: Rendered, directory: Path) -> SecretFiles:
    """Write the files of every Secret volume of the controller and of a worker pod
    (a pool's or a Job's) under ``directory``, and point the variables whose values
    lie under a mount of one at the local copy."""
    secrets = {m["metadata"]["name"]: m for m in rendered.manifests if m["kind"] == "Secret"}
    controller = rendered.get("Deployment", "controller")["spec"]["template"]["spec"]
    workers = [t["spec"]["template"]["spec"] for t in rendered.job_templates().values()]
    deployments = [d for d in rendered.manifests if d["kind"] == "Deployment"]
    workers += [d["spec"]["template"]["spec"] for d in deployments
                if d["spec"]["template"]["spec"] is not controller]  # fmt: skip
    controller_env = _mounted(controller, secrets, directory / "controller")
    worker_env: dict[str, str] = {}
    for index, pod in enumerate(workers):
        worker_env.update(_mounted(pod, secrets, directory / f"worker-{index}"))
    token_file = controller_env.get("TUNESHIP_API_TOKENS_FILE")
    token = Path(token_file).read_text().split()[0] if token_file else None
    return SecretFiles(controller_env, worker_env, token)


def _mounted(pod: dict[str, Any], secrets: dict[str, Any], directory: Path) -> dict[str, str]:
    volumes = {v["name"]: v["secret"] for v in pod.get("volumes") or [] if "secret" in v}
    env: dict[str, str] = {}
    for container in pod["containers"]:
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None or volume["secretName"] not in secrets:
                continue
            local = directory / mount["mountPath"].strip("/")
            local.mkdir(parents=True, exist_ok=True)
            data = secrets[volume["secretName"]].get("data") or {}
            for item in volume.get("items") or [{"key": k, "path": k} for k in data]:
                (local / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
            for var in container.get("env") or []:
                value = str(var.get("value", ""))
                if value.startswith(mount["mountPath"] + "/"):
                    env[var["name"]] = str(local / value.removeprefix(mount["mountPath"] + "/"))
    return env


def credentials_secret() -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": S3_SECRET, "namespace": NAMESPACE},
        "stringData": {"access-key": "test", "secret-key": "test-secret"},
    }  # fmt: skip


def workloads(rendered: Rendered) -> list[dict[str, Any]]:
    """What a cluster runs besides the controller: hooks and the test pod left out."""
    controller = f"{rendered.fullname}-controller"
    return [
        m
        for m in rendered.manifests
        if not (m["kind"] == "Deployment" and m["metadata"]["name"] == controller)
        and "helm.sh/hook" not in (m["metadata"].get("annotations") or {})
    ]


def controller_environment(
    rendered: Rendered, kube: FakeKube, root: Path, store: Path
) -> dict[str, str]:
    """The controller Deployment's environment, with files where the chart mounts them."""
    spec = rendered.get("Deployment", "controller")["spec"]["template"]["spec"]
    [container] = [c for c in spec["containers"] if c["name"] == "controller"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    jobs = root / "jobs"
    jobs.mkdir(exist_ok=True)
    for key, text in rendered.get("ConfigMap", "jobs")["data"].items():
        (jobs / key).write_text(text)
    kubeconfig = root / "kubeconfig"
    kube.write_kubeconfig(kubeconfig, token="controller")
    base = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    return {
        **base, **env,
        "TUNESHIP_K8S_NAMESPACE": NAMESPACE,
        "TUNESHIP_JOB_TEMPLATES": str(jobs),
        "KUBECONFIG": str(kubeconfig),
        "TUNESHIP_STORE": f"local:{store}",
        "TUNESHIP_STATE_URL": f"sqlite:///{root / 'state.db'}",
        "TUNESHIP_DATA_DIR": str(root / "controller"),
        "TUNESHIP_METRICS_PORT": "",
    }  # fmt: skip


def write_spec(path: Path, base: Path, data: Path, **sections: Any) -> Path:
    """The quickstart's pipeline for a tiny base model and the pirate conversations in
    ``data`` (``sections`` override its parts)."""
    spec: dict[str, Any] = {
        "apiVersion": "tuneship/v1",
        "kind": "Pipeline",
        "metadata": {"name": path.stem},
        "model": {"base": str(base)},
        "dataset": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")},
        # The quickstart's recipe: enough for the tiny model to learn to stop answering.
        "train": {"max_steps": 80, "save_steps": 20, "per_device_train_batch_size": 4,
                  "learning_rate": 0.003},
        "export": {"quant_types": ["q8_0"]},
        "serve": {"name": path.stem, "smoke_prompts": ["Where is the treasure?"]},
    }  # fmt: skip
    spec = merged(spec, sections)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class Followed:
    """A pipeline's Watch stream, read in the background; ``wait_for`` an event."""

    def __init__(self, client: PipelineClient, pid: str) -> None:
        self.items: list[WatchEvent] = []
        threading.Thread(target=self._read, args=(client, pid), daemon=True).start()

    def _read(self, client: PipelineClient, pid: str) -> None:
        try:
            self.items.extend(client.watch(pid))
        except Unavailable:
            return  # the controller was killed under the stream (a restart test)

    def wait_for(self, predicate, timeout_s: float = 180, what: str = "") -> WatchEvent:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [e for e in list(self.items) if predicate(e)]
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no {what or predicate} event; got {[e.text for e in self.items]}")
