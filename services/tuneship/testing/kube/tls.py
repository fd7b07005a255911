"""A throwaway certificate for serving the fake API over HTTPS.

Only needed by clients that refuse to send a bearer token over plain HTTP: client-go
(and so Helm) reads credentials from its configuration only for TLS servers. Made with
the ``openssl`` command (no Python crypto library is needed), valid for ``127.0.0.1``.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path


def self_signed(directory: Path) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` for ``IP:127.0.0.1`` into ``directory``.

    Raises RuntimeError when ``openssl`` is not installed.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("FakeKube(tls=True) needs the openssl command")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=fake-kube", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context for the certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
