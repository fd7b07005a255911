"""MinIO / S3 as the artifact store (the minio SDK).

Large files go up as multipart uploads with parts sent in parallel. The uploader
hashes the file first, sends the hash as object metadata, hashes the bytes again as
they stream out (a file that changes mid-upload fails before the upload completes),
and checks the stored size and hash afterwards. Downloads are hashed as they arrive
and compared with that metadata before the file is renamed into place.

Transient failures (refused connections, timeouts, 5xx, throttling) are retried with
exponential backoff and jitter; an upload that fails has its multipart upload
aborted so no invisible parts are left behind to be billed.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import TypeVar

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError

from tuneship.common import layout
from tuneship.common.atomic import staged_file
from tuneship.common.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    TuneshipError,
    Unavailable,
)
from tuneship.common.hashing import sha256_bytes, sha256_file
from tuneship.common.store.base import (
    CHUNK,
    CorruptArtifact,
    HashingReader,
    ObjectInfo,
)

T = TypeVar("T")
MiB = 1 << 20
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
_META_HEADER = f"x-amz-meta-{layout.Meta.SHA256}"
_MISSING = {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "NoSuchUpload"}
_TRANSIENT = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "ThrottlingException",
    "OperationAborted",
    "XMinioServerNotInitialized",
}
_CREDENTIALS = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


class S3Store:
    """Objects in ``bucket`` under ``prefix`` on an S3-compatible server at ``endpoint``.

    ``endpoint`` is ``host:port``; ``part_size`` (≥ 5 MiB) is the multipart part size
    and files larger than it are sent as ``parallel_parts`` concurrent parts;
    ``retries`` is how many times a failed operation is tried again, waiting
    ``backoff_s * 2**n`` (capped at ``max_backoff_s``) between tries.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        prefix: str = "",
        secure: bool = True,
        region: str | None = None,
        part_size: int = 16 * MiB,
        parallel_parts: int = 4,
        retries: int = 5,
        backoff_s: float = 0.25,
        max_backoff_s: float = 8.0,
        create_bucket: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise InvalidInput(
                f"part size {part_size} is below S3's minimum of {MIN_PART_SIZE}",
                where="part_size",
            )
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = layout.check_prefix(prefix.strip("/") + "/" if prefix.strip("/") else "")
        self.part_size = part_size
        self.parallel_parts = max(1, parallel_parts)
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.create_bucket = create_bucket
        self._sleep = sleep
        self._bucket_ready = False
        self._lock = threading.Lock()
        # A few quick per-request retries inside urllib3 (a part is retried alone);
        # anything that outlasts them is retried here as a whole operation.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=120),
            maxsize=self.parallel_parts + 2,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            retries=urllib3.Retry(
                total=2,
                backoff_factor=0.1,
                status_forcelist=(500, 502, 503, 504),
                allowed_methods=None,
                raise_on_status=False,
            ),
        )
        self.client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"

    def _name(self, key: str) -> str:
        return self.prefix + layout.check_key(key)

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key} at {self.endpoint}"

    # -- error handling ---------------------------------------------------------

    def _translate(self, exc: BaseException, key: str) -> BaseException:
        """The tuneship error for a failure of the SDK or the network."""
        where = self._where(key)
        if isinstance(exc, TuneshipError):
            return exc
        if isinstance(exc, S3Error):
            if exc.code in _MISSING:
                return NotFound(f"{exc.code}: no object {key!r} in {self.describe()}", where=where)
            if exc.code in _CREDENTIALS:
                return FailedPrecondition(
                    f"{exc.code}: the store refused these credentials",
                    where=where,
                    hint="check TUNESHIP_S3_ACCESS_KEY / TUNESHIP_S3_SECRET_KEY and bucket policy",
                )
            status = exc.response.status if exc.response is not None else 0
            if exc.code in _TRANSIENT or status >= 500:
                return Unavailable(f"{exc.code}: {exc.message}", where=where)
            return exc
        if isinstance(exc, ServerError | InvalidResponseError):
            return Unavailable(f"store answered with an error: {exc}", where=where)
        if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
            return Unavailable(
                f"cannot reach the store at {self.endpoint}: {type(exc).__name__}",
                where=where,
                hint="is the S3 endpoint up and TUNESHIP_S3_ENDPOINT right?",
            )
        if isinstance(exc, ValueError):
            return InvalidInput(str(exc), where=where)
        return exc

    def _call(self, key: str, operation: Callable[[], T]) -> T:
        """Run ``operation``, retrying transient failures with backoff and jitter."""
        for attempt in range(self.retries + 1):
            try:
                self._ensure_bucket()
                return operation()
            except Exception as exc:
                error = self._translate(exc, key)
                retryable = getattr(error, "retryable", False)
                if not retryable or attempt == self.retries:
                    if error is exc:
                        raise
                    raise error from exc
                delay = min(self.backoff_s * 2**attempt, self.max_backoff_s)
                self._sleep(delay * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._lock:
            if self._bucket_ready:
                return
            if not self.client.bucket_exists(self.bucket):
                if not self.create_bucket:
                    raise NotFound(f"bucket {self.bucket!r} does not exist at {self.endpoint}")
                try:
                    self.client.make_bucket(self.bucket)
                except S3Error as exc:
                    if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                        raise
            self._bucket_ready = True

    # -- uploads ----------------------------------------------------------------

    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        path = Path(path)
        name = self.prefix + layout.check_write_key(key)
        size = path.stat().st_size
        expected = sha256 or sha256_file(path)
        tries = 0

        def upload() -> None:
            nonlocal tries
            tries += 1
            if tries > 1 and size > self.part_size:
                # The abort after the last failure may not have reached the server.
                self._abort_uploads(name, exact=True)
            with path.open("rb") as handle:
                reader = HashingReader(handle, size, expected, self._where(key))
                try:
                    self.client.put_object(
                        self.bucket,
                        name,
                        reader,  # type: ignore[arg-type]
                        size,
                        metadata={layout.Meta.SHA256: expected},
                        part_size=self.part_size,
                        num_parallel_uploads=self.parallel_parts,
                    )
                except BaseException:
                    self._abort_uploads(name, exact=True)
                    raise

        self._call(key, upload)
        self._check_stored(key, size, expected)
        return ObjectInfo(key, size, expected)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        digest = sha256_bytes(data)
        name = self.prefix + layout.check_write_key(key)  # before anything is sent

        def upload() -> None:
            self.client.put_object(
                self.bucket,
                name,
                BytesIO(data),
                len(data),
                content_type="application/json" if key.endswith(".json") else "",
                metadata={layout.Meta.SHA256: digest},
            )

        self._call(key, upload)
        return ObjectInfo(key, len(data), digest)

    def _check_stored(self, key: str, size: int, sha256: str) -> None:
        info = self.stat(key)
        if info.size != size or info.sha256 != sha256:
            self._call(key, lambda: self.client.remove_object(self.bucket, self._name(key)))
            raise CorruptArtifact(
                f"stored object has {info.size} bytes and sha256 {info.sha256}, "
                f"uploaded {size} bytes with sha256 {sha256}; the object was removed",
                where=self._where(key),
                hint="retry the upload; if it repeats, check the S3 server",
            )

    def _abort_uploads(self, name: str, *, exact: bool) -> int:
        """Abort incomplete multipart uploads of ``name`` (or under it); best effort."""
        aborted = 0
        try:
            result = self.client._list_multipart_uploads(self.bucket, prefix=name)
            for upload in result.uploads:
                if (exact and upload.object_name != name) or not upload.upload_id:
                    continue
                self.client._abort_multipart_upload(
                    self.bucket, upload.object_name, upload.upload_id
                )
                aborted += 1
        except Exception:
            pass
        return aborted

    def abort_incomplete_uploads(self, prefix: str = "") -> int:
        """Abort every incomplete multipart upload under ``prefix``; returns how many.

        Uploads interrupted by a crash (no chance to abort) are left on the server;
        the controller sweeps them with this.
        """
        return self._abort_uploads(self.prefix + layout.check_prefix(prefix), exact=False)

    # -- downloads --------------------------------------------------------------

    def get_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        dest = Path(path)
        name = self._name(key)

        def download() -> ObjectInfo:
            response = self.client.get_object(self.bucket, name)
            try:
                recorded = response.headers.get(_META_HEADER)
                length = int(response.headers.get("content-length", -1))
                digest = hashlib.sha256()
                with staged_file(dest) as temp:
                    with temp.open("wb") as writer:
                        for chunk in response.stream(CHUNK):
                            digest.update(chunk)
                            writer.write(chunk)
                        writer.flush()
                        os.fsync(writer.fileno())
                    size = temp.stat().st_size
                    actual = digest.hexdigest()
                    wanted = [h for h in (sha256, recorded) if h]
                    if (length >= 0 and size != length) or any(h != actual for h in wanted):
                        raise CorruptArtifact(
                            f"downloaded {size} bytes with sha256 {actual[:12]}…, expected "
                            f"{length} bytes with sha256 {(wanted or ['?'])[0][:12]}…",
                            where=self._where(key),
                            hint="the stored copy is damaged; rerun the stage that produced it",
                        )
                return ObjectInfo(key, size, actual)
            finally:
                response.close()
                response.release_conn()

        return self._call(key, download)

    def get_bytes(self, key: str) -> bytes:
        def read() -> bytes:
            response = self.client.get_object(self.bucket, self._name(key))
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        return self._call(key, read)

    def read_chunks(self, key: str, offset: int = 0) -> Iterator[bytes]:
        # Opening is retried like any call; a failure once bytes flow is not (the
        # reader has them already), it is raised as the store's error.
        name = self._name(key)
        response = self._call(key, lambda: self.client.get_object(self.bucket, name, offset=offset))
        return self._pieces(key, response)

    def _pieces(self, key: str, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            yield from response.stream(CHUNK)
        except Exception as exc:
            error = self._translate(exc, key)
            if error is exc:
                raise
            raise error from exc
        finally:
            response.close()
            response.release_conn()

    # -- metadata and listing ---------------------------------------------------

    def stat(self, key: str) -> ObjectInfo:
        found = self._call(key, lambda: self.client.stat_object(self.bucket, self._name(key)))
        recorded = found.metadata.get(_META_HEADER) if found.metadata else None
        return ObjectInfo(key, int(found.size or 0), recorded)

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        full = self.prefix + layout.check_prefix(prefix)

        def listing() -> list[ObjectInfo]:
            found = self.client.list_objects(self.bucket, prefix=full, recursive=True)
            return [
                ObjectInfo(str(o.object_name)[len(self.prefix) :], int(o.size or 0))
                for o in found
                if o.object_name and not o.is_dir
            ]

        return sorted(self._call(prefix or "/", listing), key=lambda info: info.key)

    def delete(self, key: str) -> bool:
        if not self.exists(key):
            return False
        self._call(key, lambda: self.client.remove_object(self.bucket, self._name(key)))
        return True

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise InvalidInput("refusing to delete the whole store", where="prefix")
        found = self.list(prefix)

        def delete() -> None:
            doomed = [DeleteObject(self.prefix + info.key) for info in found]
            errors = list(self.client.remove_objects(self.bucket, doomed))
            if errors:
                raise Unavailable(f"{len(errors)} objects not deleted: {errors[0]}")

        if found:
            self._call(prefix, delete)
        self.abort_incomplete_uploads(prefix)
        return len(found)
