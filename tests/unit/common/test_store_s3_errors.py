"""How S3Store classifies failures: what is retried and what the caller is told."""

from __future__ import annotations

import pytest
import urllib3
from minio.error import S3Error
from tuneship.common.errors import FailedPrecondition, InvalidInput, NotFound, Unavailable
from tuneship.common.store import S3Store

pytestmark = pytest.mark.unit


def _store(sleeps: list[float] | None = None) -> S3Store:
    return S3Store(
        "127.0.0.1:9",
        "k",
        "s",
        "bucket",
        secure=False,
        retries=3,
        sleep=(sleeps.append if sleeps is not None else lambda _: None),
    )


def _s3_error(code: str, status: int) -> S3Error:
    return S3Error(urllib3.HTTPResponse(status=status), code, "msg", "/bucket/k", "r", "h")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_s3_error("NoSuchKey", 404), NotFound),
        (_s3_error("NoSuchBucket", 404), NotFound),
        (_s3_error("SlowDown", 503), Unavailable),
        (_s3_error("InternalError", 500), Unavailable),
        (_s3_error("SomethingNew", 502), Unavailable),
        (_s3_error("AccessDenied", 403), FailedPrecondition),
        (_s3_error("SignatureDoesNotMatch", 403), FailedPrecondition),
        (urllib3.exceptions.MaxRetryError(None, "/", "refused"), Unavailable),
        (ConnectionResetError(), Unavailable),
        (ValueError("invalid bucket name b"), InvalidInput),
    ],
)
def test_failures_map_to_the_error_hierarchy(error: Exception, expected: type) -> None:
    translated = _store()._translate(error, "pipelines/p/manifest.json")
    assert isinstance(translated, expected)
    assert "s3://bucket/pipelines/p/manifest.json at 127.0.0.1:9" in str(translated)


def test_unknown_client_errors_are_not_retried() -> None:
    error = _s3_error("InvalidRange", 416)
    assert _store()._translate(error, "k") is error


def test_transient_failures_are_retried_with_growing_backoff() -> None:
    sleeps: list[float] = []
    store = _store(sleeps)
    calls = []
    store._ensure_bucket = lambda: None  # type: ignore[method-assign]

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise _s3_error("SlowDown", 503)
        return "done"

    assert store._call("k", flaky) == "done"
    assert len(sleeps) == 3
    assert sleeps[0] < sleeps[2]


def test_permanent_failures_are_not_retried() -> None:
    sleeps: list[float] = []
    store = _store(sleeps)
    store._ensure_bucket = lambda: None  # type: ignore[method-assign]

    def missing() -> None:
        raise _s3_error("NoSuchKey", 404)

    with pytest.raises(NotFound):
        store._call("k", missing)
    assert sleeps == []
