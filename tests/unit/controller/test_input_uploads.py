"""Inputs streamed to the controller (``StoreInputs.receive``) are stored exactly as a
direct upload would store them, checked file by file, and only ever committed whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tuneship.common.errors import InvalidInput
from tuneship.common.manifest import FileEntry, scan_dir
from tuneship.common.store import LocalStore
from tuneship.common.store.commit import fetch_stage, read_manifest, upload_input
from tuneship.controller.inputs import IncomingInput, StoreInputs, UploadSettings

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def model_dir(root: Path) -> Path:
    model = root / "model"
    (model / "tokenizer").mkdir(parents=True)
    (model / "config.json").write_text('{"hidden_size": 256}\n')
    (model / "tokenizer" / "tokenizer.json").write_text('{"model": {}}\n')
    (model / "weights.bin").write_bytes(bytes(range(256)) * 40)
    (model / "empty.txt").write_bytes(b"")
    return model


def incoming(path: Path, kind: str = "model", field: str = "model.base") -> IncomingInput:
    return IncomingInput(kind, field, str(path), scan_dir(path))


def pieces(path: Path, listing: IncomingInput, chunk: int = 1000) -> Iterator[tuple[str, bytes]]:
    """What a client sends: each file of the listing, ``chunk`` bytes at a time."""
    for entry in listing.files:
        data = (path if path.is_file() else path / entry.name).read_bytes()
        yield entry.name, data[:chunk]
        for start in range(chunk, len(data), chunk):
            yield "", data[start : start + chunk]


def inputs(tmp_path: Path, **settings: object) -> StoreInputs:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return StoreInputs(
        LocalStore(tmp_path / "store"), UploadSettings(scratch_dir=scratch, **settings)
    )


def test_a_streamed_model_has_the_key_and_manifest_of_a_direct_upload(tmp_path: Path) -> None:
    model = model_dir(tmp_path)
    intake = inputs(tmp_path)
    listing = incoming(model)
    assert intake.find(listing) is None
    stored = intake.receive(listing, pieces(model, listing))
    direct = upload_input(LocalStore(tmp_path / "direct"), model, kind="model")
    assert stored.artifact.key == direct.key and not stored.already_stored
    assert stored.location == f"store:{direct.key}"
    received = read_manifest(intake.store, stored.artifact.key)
    assert (received.root, received.files, received.labels, received.kind) == (
        direct.root, direct.files, direct.labels, direct.kind,
    )  # fmt: skip
    fetch_stage(intake.store, stored.artifact.key, tmp_path / "back")  # every sha256 checked
    assert (tmp_path / "back" / "weights.bin").read_bytes() == (model / "weights.bin").read_bytes()
    assert not list((tmp_path / "scratch").iterdir())  # scratch files are removed


def test_identical_content_is_found_and_nothing_is_read(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": []}\n')
    intake = inputs(tmp_path)
    direct = upload_input(intake.store, data, kind="dataset")  # `tuneship store put`
    listing = incoming(data, "dataset", "dataset.train")
    found = intake.find(listing)
    assert found is not None and found.already_stored and found.artifact.key == direct.key

    def unread() -> Iterator[tuple[str, bytes]]:
        raise AssertionError("the stream was read although the input is stored")
        yield  # pragma: no cover

    assert intake.receive(listing, unread()) == found


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda ps: ps[:-1], "ended"),  # the stream stops before the last chunk
        (lambda ps: [(p, d.replace(b"\x05", b"\x06")) for p, d in ps], "sha256"),
        (lambda ps: [*ps[:1], ("", b"extra"), *ps[1:]], "more than"),
        (lambda ps: [("weights.bin", ps[0][1]), *ps[1:]], "listing has"),
    ],
    ids=["cut-short", "changed", "too-long", "out-of-order"],
)
def test_a_broken_stream_commits_nothing(tmp_path: Path, damage, message: str) -> None:
    model = model_dir(tmp_path)
    intake = inputs(tmp_path)
    listing = incoming(model)
    with pytest.raises(InvalidInput, match=message) as caught:
        intake.receive(listing, iter(damage(list(pieces(model, listing)))))
    assert caught.value.where == "model.base"
    assert not [i.key for i in intake.store.list("inputs/") if i.key.endswith("manifest.json")]
    assert intake.find(listing) is None
    assert not list((tmp_path / "scratch").iterdir())
    again = intake.receive(listing, pieces(model, listing))  # a retry commits it whole
    assert again.artifact.key == upload_input(intake.store, model, kind="model").key


def test_a_stream_that_fails_midway_leaves_no_manifest(tmp_path: Path) -> None:
    model = model_dir(tmp_path)
    intake = inputs(tmp_path)
    listing = incoming(model)

    def interrupted() -> Iterator[tuple[str, bytes]]:
        sent = list(pieces(model, listing))
        yield from sent[: len(sent) // 2]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        intake.receive(listing, interrupted())
    assert intake.find(listing) is None
    assert not [i for i in intake.store.list("inputs/") if i.key.endswith("manifest.json")]
    assert not list((tmp_path / "scratch").iterdir())


def test_uploads_over_the_limit_are_refused_before_any_byte(tmp_path: Path) -> None:
    model = model_dir(tmp_path)
    intake = inputs(tmp_path, max_bytes=1000)
    listing = incoming(model)
    with pytest.raises(InvalidInput, match=r"takes uploads of at most 1000 bytes") as caught:
        intake.find(listing)
    assert "tuneship store put" in str(caught.value.hint)
    with pytest.raises(InvalidInput, match="at most"):
        intake.receive(listing, iter(()))
    assert not intake.store.list("")


@pytest.mark.parametrize(
    ("kind", "names", "message"),
    [
        ("model", [], "no files"),
        ("model", ["a.json", "a.json"], "twice"),
        ("model", ["../escape"], "'..' segment"),
        ("../x", ["a.json"], "input kind"),
    ],
)
def test_malformed_listings_are_invalid(
    tmp_path: Path, kind: str, names: list[str], message: str
) -> None:
    files = tuple(FileEntry(n, 1, "0" * 64) for n in names)
    with pytest.raises(InvalidInput, match=message):
        inputs(tmp_path).find(IncomingInput(kind, "model.base", "m", files))
