"""Throwaway certificates, made with the ``openssl`` command (no Python crypto library
is needed), valid for ``127.0.0.1``.

``self_signed`` serves the fake API over HTTPS, for clients that refuse to send a
bearer token over plain HTTP (client-go, and so Helm, reads credentials from its
configuration only for TLS servers). ``CertificateAuthority`` issues what the TLS and
mutual-TLS tests of the tuneship servers need, expired certificates included.
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


_CA_CONFIG = """[ca]
default_ca = issuer
[issuer]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
[any]
commonName = supplied
"""
EXPIRED = ("20200101000000Z", "20200102000000Z")
"""A validity that ended long ago (``openssl ca -startdate/-enddate``)."""


class CertificateAuthority:
    """A throwaway CA in ``directory`` that issues certificates with the ``openssl``
    command: server certificates for ``127.0.0.1``/``localhost`` (and any other
    names), client certificates, and ones whose validity ended in 2020.

        ca = CertificateAuthority(tmp_path / "ca")
        cert, key = ca.issue("server")                     # 127.0.0.1, localhost
        old_cert, old_key = ca.issue("old", expired=True)
    """

    def __init__(self, directory: Path, name: str = "tuneship-test-ca") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = directory / "ca.pem", directory / "ca.key"
        (directory / "ca.cnf").write_text(_CA_CONFIG)
        (directory / "index.txt").write_text("")
        (directory / "serial").write_text("01\n")
        _openssl(
            ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", str(self.key),
             "-out", str(self.cert), "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            directory,
        )  # fmt: skip

    def issue(
        self,
        name: str,
        *,
        hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
        expired: bool = False,
    ) -> tuple[Path, Path]:
        """``<name>.pem`` and ``<name>.key``, good for both ends of a TLS connection
        (server and client auth), naming ``hosts`` (IP addresses and DNS names)."""
        cert, key, request = (self.directory / f"{name}{ext}" for ext in (".pem", ".key", ".csr"))
        alt = ",".join(f"IP:{h}" if h[:1].isdigit() else f"DNS:{h}" for h in hosts)
        _openssl(
            ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(request),
             "-addext", f"subjectAltName={alt}",
             "-addext", "extendedKeyUsage=serverAuth,clientAuth"],
            self.directory,
        )  # fmt: skip
        validity = ["-startdate", EXPIRED[0], "-enddate", EXPIRED[1]] if expired else ["-days", "2"]
        _openssl(
            ["ca", "-batch", "-config", "ca.cnf", "-cert", str(self.cert), "-keyfile",
             str(self.key), "-in", str(request), "-out", str(cert), "-notext", *validity],
            self.directory,
        )  # fmt: skip
        return cert, key


def _openssl(args: list[str], cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("test certificates need the openssl command")
    done = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")
