"""Readiness probes, run by the fake kubelet against the pod's own loopback IP.

``grpc`` calls the standard health service (``grpc.health.v1.Health/Check``, SERVING
= success); ``tcpSocket`` connects; ``httpGet`` expects a status in [200, 400);
``exec`` runs the command with the container's environment. Ports may be numbers or
the names of container ports. Timing follows the probe's ``initialDelaySeconds``,
``periodSeconds``, ``successThreshold`` and ``failureThreshold``, with delays and
periods capped by the kubelet's ``probe_period_s`` so that tests do not wait 10 s.
Liveness and startup probes are not run.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ReadinessProbe:
    """One container's readiness probe and its success/failure counters."""

    def __init__(self, spec: Mapping[str, Any], container: Mapping[str, Any], cap_s: float) -> None:
        self.spec = spec
        self.container = container
        self.period_s = min(float(spec.get("periodSeconds", 10)), cap_s)
        self._delay_s = min(float(spec.get("initialDelaySeconds", 0)), cap_s)
        self._timeout_s = float(spec.get("timeoutSeconds", 1))
        self._successes = 0
        self._failures = 0
        self._next = 0.0

    def restart(self) -> None:
        """The container (re)started: wait the initial delay, count afresh."""
        self._successes = self._failures = 0
        self._next = time.monotonic() + self._delay_s

    def check(self, ip: str, env: Mapping[str, str], cwd: Path, ready: bool) -> bool:
        """Probe if due; returns the container's readiness afterwards."""
        now = time.monotonic()
        if now < self._next:
            return ready
        self._next = now + self.period_s
        if self._probe(ip, env, cwd):
            self._successes, self._failures = self._successes + 1, 0
            return ready or self._successes >= int(self.spec.get("successThreshold", 1))
        self._successes, self._failures = 0, self._failures + 1
        return ready and self._failures < int(self.spec.get("failureThreshold", 3))

    def _probe(self, ip: str, env: Mapping[str, str], cwd: Path) -> bool:
        try:
            if "grpc" in self.spec:
                return self._grpc(ip, self.spec["grpc"])
            if "tcpSocket" in self.spec:
                action = self.spec["tcpSocket"]
                address = (action.get("host") or ip, self._port(action["port"]))
                with socket.create_connection(address, timeout=self._timeout_s):
                    return True
            if "httpGet" in self.spec:
                return self._http(ip, self.spec["httpGet"])
            if "exec" in self.spec:
                command = list(self.spec["exec"].get("command") or [])
                done = subprocess.run(command, env=dict(env), cwd=cwd, capture_output=True,
                                      timeout=self._timeout_s, check=False)  # fmt: skip
                return done.returncode == 0
        except (OSError, subprocess.TimeoutExpired, urllib.error.URLError):
            return False
        return True  # a probe with no handler: nothing to wait for

    def _grpc(self, ip: str, action: Mapping[str, Any]) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        target = f"{ip}:{self._port(action['port'])}"
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                request = health_pb2.HealthCheckRequest(service=action.get("service", ""))
                answer = stub.Check(request, timeout=self._timeout_s)
            except grpc.RpcError:
                return False
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def _http(self, ip: str, action: Mapping[str, Any]) -> bool:
        scheme = str(action.get("scheme", "HTTP")).lower()
        host = action.get("host") or ip
        url = f"{scheme}://{host}:{self._port(action['port'])}{action.get('path', '/')}"
        headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                return 200 <= response.status < 400
        except urllib.error.HTTPError as error:
            return 200 <= error.code < 400

    def _port(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in self.container.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise OSError(f"port {port!r} is not a named port of container {self.container['name']}")
