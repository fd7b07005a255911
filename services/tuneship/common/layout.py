"""Every object-store key, object metadata key and label tuneship uses, defined once.

Code never builds a store key by concatenating strings; it calls one of these
functions, so the layout of a bucket can be read (and changed) in one place::

    inputs/{kind}/{digest}/manifest.json              uploaded base model or dataset
    inputs/{kind}/{digest}/files/{name}
    pipelines/{pipeline}/stages/{stage}/manifest.json     a committed stage (written last)
    pipelines/{pipeline}/stages/{stage}/staging/{attempt}/{name}   its files
    pipelines/{pipeline}/stages/{stage}/checkpoints/step-{step:08d}/{name}
    pipelines/{pipeline}/stages/{stage}/checkpoints/step-{step:08d}/manifest.json
    cache/{cache_key}.json                            a copy of the manifest that made it
    serving/models/{name}.json                        what every serving replica re-publishes
"""

from __future__ import annotations

import re

from tuneship.common.errors import InvalidInput

MANIFEST = "manifest.json"

# Names that become one path segment: pipeline ids, stage names, attempts, input kinds.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class Meta:
    """Object metadata keys (sent as ``x-amz-meta-<key>`` on S3)."""

    SHA256 = "sha256"
    """Hex sha256 of the object's bytes, computed by the uploader before upload."""


class Labels:
    """Labels attached to manifests, pods and served models, so each can be traced back."""

    PIPELINE = "tuneship.dev/pipeline"
    STAGE = "tuneship.dev/stage"
    ATTEMPT = "tuneship.dev/attempt"
    STEP = "tuneship.dev/step"
    INPUT_KIND = "tuneship.dev/input-kind"


class ManifestKind:
    """What a manifest commits."""

    STAGE = "stage"
    INPUT = "input"
    CHECKPOINT = "checkpoint"


def segment(value: str, what: str) -> str:
    """``value`` if it is safe as one key segment, else InvalidInput naming ``what``."""
    if not _SEGMENT.match(value) or value in {".", ".."}:
        raise InvalidInput(
            f"{what} {value!r} cannot be used in an artifact key",
            where=what,
            hint="use letters, digits, '.', '_' or '-' (at most 128, not starting with a dot)",
        )
    return value


# S3 allows 1024 bytes per object name; leave room for a store's own prefix.
MAX_KEY_BYTES = 900
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KEY_HINT = "keys look like 'pipelines/p1/stages/train/manifest.json'"


def _key_problem(key: str) -> str | None:
    """What makes ``key`` unsafe as an object key, or None."""
    if not key:
        return "is empty"
    if key.startswith("/"):
        return "is absolute (starts with '/')"
    if "\\" in key:
        return "contains a backslash"
    if _CONTROL.search(key):
        return "contains a control character (NUL, newline, ...)"
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes"
    parts = key.split("/")
    if ".." in parts:
        return "has a '..' segment"
    if "." in parts:
        return "has a '.' segment"
    if "" in parts:
        return "has an empty segment ('//' or a trailing '/')"
    return None


def check_key(key: str) -> str:
    """``key`` if it is a relative POSIX key of named segments: not empty, no leading
    '/', no '', '.' or '..' segment, no backslash or control character (NUL included),
    at most ``MAX_KEY_BYTES``. Both store adapters call this on every key they touch."""
    problem = _key_problem(key)
    if problem:
        raise InvalidInput(f"artifact key {key!r} {problem}", where="key", hint=_KEY_HINT)
    return key


WRITABLE = ("inputs/", "pipelines/", "cache/", "serving/")
"""The only areas tuneship writes to; anything else in a bucket belongs to someone else."""


def check_write_key(key: str) -> str:
    """``key`` if tuneship may write it: a safe key (:func:`check_key`) under
    ``inputs/``, ``pipelines/<pipeline>/``, ``cache/`` or ``serving/``.

    Both store adapters call this before writing a byte, so a key built from bad input
    (or a bug) cannot overwrite objects outside tuneship's areas.
    """
    check_key(key)
    parts = key.split("/")
    inside = key.startswith(WRITABLE) and len(parts) > 1
    if inside and parts[0] == "pipelines":
        inside = len(parts) > 2 and bool(_SEGMENT.match(parts[1]))
    if not inside:
        raise InvalidInput(
            f"refusing to write {key!r}: tuneship writes only under inputs/, "
            "pipelines/<pipeline>/, cache/ and serving/",
            where="key",
            hint="build keys with tuneship.common.layout; to add your own files as an "
            "input, use `tuneship store put PATH --kind KIND`",
        )
    return key


def is_input_manifest(key: str) -> bool:
    """Whether ``key`` is where :func:`input_manifest` puts an uploaded input's manifest."""
    parts = key.split("/")
    return (
        len(parts) == 4
        and parts[0] == "inputs"
        and bool(_SEGMENT.match(parts[1]))
        and bool(_DIGEST.match(parts[2]))
        and parts[3] == MANIFEST
    )


def in_pipeline_area(key: str) -> bool:
    """Whether ``key`` (or a prefix) lies where tuneship keeps pipelines' own results:
    stage outputs, checkpoints, the cache index and served-model records."""
    return key.split("/", 1)[0] in {"pipelines", "cache", "serving"}


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty (everything) or a key ending in '/'."""
    if prefix:
        if not prefix.endswith("/"):
            raise InvalidInput(f"prefix {prefix!r} must end with '/'", where="prefix")
        check_key(prefix[:-1])
    return prefix


def join(prefix: str, name: str) -> str:
    """``name`` (a relative path such as ``tokenizer/vocab.json``) under ``prefix``."""
    return check_key(check_prefix(prefix) + name)


def pipeline_prefix(pipeline: str) -> str:
    return f"pipelines/{segment(pipeline, 'pipeline')}/"


def stage_prefix(pipeline: str, stage: str) -> str:
    return f"{pipeline_prefix(pipeline)}stages/{segment(stage, 'stage')}/"


def stage_manifest(pipeline: str, stage: str) -> str:
    """Where a stage's manifest is written when (and only when) the stage commits."""
    return stage_prefix(pipeline, stage) + MANIFEST


def staging_prefix(pipeline: str, stage: str, attempt: str) -> str:
    """Where one attempt of a stage uploads its files before committing."""
    return f"{stage_prefix(pipeline, stage)}staging/{segment(attempt, 'attempt')}/"


def checkpoints_prefix(pipeline: str, stage: str) -> str:
    return stage_prefix(pipeline, stage) + "checkpoints/"


def checkpoint_prefix(pipeline: str, stage: str, step: int) -> str:
    if step < 0:
        raise InvalidInput(f"checkpoint step {step} is negative", where="step")
    return f"{checkpoints_prefix(pipeline, stage)}step-{step:08d}/"


_CHECKPOINT_DIR = re.compile(r"step-(\d{8,})/$")


def checkpoint_step(prefix: str) -> int | None:
    """The step of a checkpoint prefix built by :func:`checkpoint_prefix`, else None."""
    found = _CHECKPOINT_DIR.search(prefix)
    return int(found.group(1)) if found else None


def input_prefix(kind: str, digest: str) -> str:
    """Content-addressed inputs: the same files uploaded twice are stored once."""
    if not _DIGEST.match(digest):
        raise InvalidInput(f"input digest {digest!r} is not a hex sha256", where="digest")
    return f"inputs/{segment(kind, 'input kind')}/{digest}/"


def input_files_prefix(kind: str, digest: str) -> str:
    return input_prefix(kind, digest) + "files/"


def input_manifest(kind: str, digest: str) -> str:
    return input_prefix(kind, digest) + MANIFEST


def cache_entry(cache_key: str) -> str:
    """The cache index: a copy of the manifest whose stage had this cache key."""
    if not _DIGEST.match(cache_key):
        raise InvalidInput(f"cache key {cache_key!r} is not a hex sha256", where="cache_key")
    return f"cache/{cache_key}.json"


SERVED_MODELS = "serving/models/"
"""Prefix of the served-model records (one per model name) that serving replicas sync."""


def served_model(name: str) -> str:
    """The record of model ``name`` (no tag): what a serving replica needs to re-publish it.

    A namespaced name (``team/pirate``) keeps its ``/`` as a key level.
    """
    parts = [segment(part, "model name") for part in name.split("/")]
    return SERVED_MODELS + "/".join(parts) + ".json"


def served_model_name(key: str) -> str | None:
    """The model name of a record key built by :func:`served_model`, else None."""
    if not key.startswith(SERVED_MODELS) or not key.endswith(".json"):
        return None
    name = key[len(SERVED_MODELS) : -len(".json")]
    try:
        return name if served_model(name) == key else None
    except InvalidInput:
        return None
