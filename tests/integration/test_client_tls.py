"""``--controller https://host`` reaches a controller through TLS (the chart's Ingress),
checked against the trusted CAs; a plain ``host:port`` stays in the clear."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc
from tuneship.testing.kube.tls import self_signed

pytestmark = pytest.mark.integration

CHECK = """
import sys
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tuneship.client import open_channel
stub = health_pb2_grpc.HealthStub(open_channel(sys.argv[1]))
print(stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status)
"""


def test_https_addresses_use_tls_and_check_the_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:

        def check(address: str, roots: Path | None) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if k != "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"}
            if roots is not None:
                env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(roots)
            return subprocess.run([sys.executable, "-c", CHECK, address], env=env,
                                  capture_output=True, text=True, timeout=60)  # fmt: skip

        trusted = check(f"https://localhost:{port}", cert)
        assert trusted.returncode == 0, trusted.stderr
        assert trusted.stdout.strip() == "1"  # SERVING
        untrusted = check(f"https://localhost:{port}", None)  # a CA the system does not know
        assert untrusted.returncode != 0
        plain = check(f"localhost:{port}", cert)  # no TLS: the handshake never happens
        assert plain.returncode != 0
    finally:
        server.stop(0)
