"""Artifact storage: the ``ArtifactStore`` port, its adapters and the settings that pick one.

``open_store(StoreSettings.from_env())`` at an entry point; everything below it takes
an ``ArtifactStore``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from tuneship.common.errors import InvalidInput
from tuneship.common.settings import TuneshipEnv, load_env
from tuneship.common.store.base import ArtifactStore, CorruptArtifact, ObjectInfo
from tuneship.common.store.local import LocalStore
from tuneship.common.store.s3 import MiB, S3Store

__all__ = [
    "ArtifactStore",
    "CorruptArtifact",
    "LocalStore",
    "ObjectInfo",
    "S3Store",
    "StoreSettings",
    "local_store_url",
    "open_store",
]


@dataclass(frozen=True)
class StoreSettings:
    """Which artifact store to use and how to reach it."""

    url: str = "local:.tuneship/store"
    """``local:/some/dir`` or ``s3://bucket/optional/prefix`` (``TUNESHIP_STORE``)."""

    s3_endpoint: str = ""
    """``host:port`` of the S3 server, e.g. ``minio.tuneship:9000`` (``TUNESHIP_S3_ENDPOINT``)."""

    s3_access_key: str = ""
    """Access key (``TUNESHIP_S3_ACCESS_KEY``)."""

    s3_secret_key: SecretStr = field(default_factory=lambda: SecretStr(""))
    """Secret key (``TUNESHIP_S3_SECRET_KEY`` or ``_FILE``); masked in reprs."""

    s3_secure: bool = True
    """Use TLS (``TUNESHIP_S3_SECURE``: true/false, 1/0, yes/no, on/off)."""

    s3_region: str | None = None
    """Region, when the server insists on one (``TUNESHIP_S3_REGION``)."""

    part_size_mib: int = 16
    """Multipart part size in MiB, at least 5 (``TUNESHIP_S3_PART_SIZE_MIB``)."""

    parallel_parts: int = 4
    """Parts of one file uploaded at once (``TUNESHIP_S3_PARALLEL_PARTS``)."""

    retries: int = 5
    """Tries after the first for a failed store operation (``TUNESHIP_S3_RETRIES``)."""

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, default_url: str | None = None
    ) -> StoreSettings:
        """Read from ``env`` (default: the process environment); ``default_url`` is used
        when ``TUNESHIP_STORE`` is unset (embedded mode passes its data directory)."""
        return cls.from_loaded(load_env(os.environ if env is None else env).values, default_url)

    @classmethod
    def from_loaded(cls, values: TuneshipEnv, default_url: str | None = None) -> StoreSettings:
        """From settings already read (``load_env``)."""
        return cls(
            url=values.store or default_url or cls.url,
            s3_endpoint=values.s3_endpoint,
            s3_access_key=values.s3_access_key.get_secret_value(),
            s3_secret_key=values.s3_secret_key,
            s3_secure=values.s3_secure,
            s3_region=values.s3_region,
            part_size_mib=values.s3_part_size_mib,
            parallel_parts=values.s3_parallel_parts,
            retries=values.s3_retries,
        )


def local_store_url(data_dir: Path) -> str:
    """The store embedded mode uses under its data directory (``<data_dir>/store``)."""
    return f"local:{Path(data_dir) / 'store'}"


def open_store(settings: StoreSettings) -> ArtifactStore:
    """The store ``settings.url`` names. InvalidInput for an unknown scheme or missing endpoint."""
    url = settings.url
    if url.startswith("local:"):
        return LocalStore(Path(url.removeprefix("local:")))
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise InvalidInput(f"{url!r} names no bucket", where="TUNESHIP_STORE")
        if not settings.s3_endpoint:
            raise InvalidInput(
                f"{url!r} needs an S3 endpoint",
                where="TUNESHIP_S3_ENDPOINT",
                hint="set TUNESHIP_S3_ENDPOINT=host:port (and the access and secret keys)",
            )
        return S3Store(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key.get_secret_value(),
            bucket,
            prefix=prefix,
            secure=settings.s3_secure,
            region=settings.s3_region,
            part_size=settings.part_size_mib * MiB,
            parallel_parts=settings.parallel_parts,
            retries=settings.retries,
        )
    raise InvalidInput(
        f"unknown store {url!r}",
        where="TUNESHIP_STORE",
        hint="use local:/path/to/dir or s3://bucket[/prefix]",
    )
