"""Served-model records: their keys, their JSON, and revisions that only go up."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuneship.common import layout
from tuneship.common.errors import InvalidInput
from tuneship.common.spec import ServeSpec
from tuneship.common.store import LocalStore
from tuneship.serving.served_models import GgufSource, ServedModelRecord, ServedModels

pytestmark = pytest.mark.unit

GGUF = GgufSource("pipelines/p/stages/export/staging/a/m.gguf", "ab" * 32, 10, "x/manifest.json")


def record(**changes: object) -> ServedModelRecord:
    fields: dict = {"name": "pirate", "version": "v1", "gguf": GGUF,
                    "serve": ServeSpec(system="Arr.", smoke_prompts=[])}  # fmt: skip
    return ServedModelRecord(**{**fields, **changes})


def test_keys_hold_one_record_per_model_name() -> None:
    assert layout.served_model("pirate") == "serving/models/pirate.json"
    assert layout.served_model("team/pirate") == "serving/models/team/pirate.json"
    assert layout.served_model_name("serving/models/team/pirate.json") == "team/pirate"
    assert layout.served_model_name("serving/models/x/.json") is None
    assert layout.served_model_name("pipelines/p/manifest.json") is None
    for bad in ("", "pirate:v1", "../x", "a b"):
        with pytest.raises(InvalidInput):
            layout.served_model(bad)


def test_a_record_reads_back_as_written(tmp_path: Path) -> None:
    models = ServedModels(LocalStore(tmp_path))
    stored = models.write(record())
    again = models.read("pirate")
    assert again == stored and again.gguf == GGUF and again.serve is not None
    assert again.serve.system == "Arr." and again.written_at
    assert models.names() == ["pirate"]
    assert models.read("parrot") is None and models.read("not a name") is None


def test_revisions_go_up_even_when_the_clock_goes_back(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = ServedModels(store, clock=lambda: 1_000).write(record())
    second = ServedModels(store, clock=lambda: 5).write(record(version="v2"))
    tomb = ServedModels(store, clock=lambda: 5).write(record(deleted=True, gguf=None, serve=None))
    assert first.revision == 1_000 and second.revision == 1_001 and tomb.revision == 1_002
    assert ServedModels(store).read("pirate") == tomb


def test_the_fingerprint_follows_what_would_be_published_not_the_revision() -> None:
    assert record(revision=1).fingerprint == record(revision=2).fingerprint
    assert record().fingerprint != record(version="v2").fingerprint
    assert record().fingerprint != record(serve=ServeSpec(system="Yo")).fingerprint
    other = GgufSource(GGUF.key, "cd" * 32, 10)
    assert record().fingerprint != record(gguf=other).fingerprint


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b'{"kind": "served-model", "format": 2, "name": "pirate"}',
        b'{"kind": "served-model", "format": 1, "name": "pirate", "deleted": false}',
        b'{"kind": "served-model", "format": 1, "name": "pirate", "deleted": false, '
        b'"version": "v1", "revision": 3, "gguf": {"key": "k"}, "serve": {}}',
        b"[]",
        record().to_json().replace(b"pipelines/p/stages", b"../../etc"),
        record().to_json().replace(b"ab" * 32, b"../../x"),
    ],
)
def test_an_unreadable_record_is_invalid_input_at_its_key(data: bytes) -> None:
    with pytest.raises(InvalidInput) as caught:
        ServedModelRecord.from_json(data, "serving/models/pirate.json")
    assert caught.value.where == "serving/models/pirate.json"


def test_a_record_stored_under_another_name_is_refused() -> None:
    data = record().to_json()
    with pytest.raises(InvalidInput, match="stored at"):
        ServedModelRecord.from_json(data, "serving/models/parrot.json")
