"""Where conversation records lie: a file, a Hugging Face dataset directory, the hub.

A dataset location is one of:

- a JSONL, JSON or Parquet file;
- a directory written by ``datasets``' ``Dataset.save_to_disk`` (``state.json`` and
  Arrow files) or ``DatasetDict.save_to_disk`` (``dataset_dict.json`` and one such
  directory per split);
- ``hf://datasets/<org>/<name>[@revision]``: a dataset repository on the Hugging Face
  hub, resolved to a commit by ``huggingface_hub`` (its cache, so ``HF_HUB_OFFLINE=1``
  reads a cached snapshot). Its data files (Parquet, JSONL, JSON, or a ``save_to_disk``
  tree) belong to splits the way ``datasets`` names them: ``data/train-00000-of-00001
  .parquet``, ``train.jsonl`` or ``train/…`` are the ``train`` split; a repository
  whose file names name no split is all ``train``.

The controller copies a hub dataset into the store with ``SOURCE_FILE`` beside its
files, naming the commit it resolved to, so the workers that read the stored copy name
records ``hf://datasets/org/name@<commit>:train:row 12`` as a local read does.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.common.errors import InvalidInput, NotFound, Unavailable

HUB_PREFIX = "hf://datasets/"
SOURCE_FILE = "tuneship-source.json"
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".arrow")
HELD_OUT = ("validation", "test")
"""The splits a dataset's authors held out, in the order one is taken as the eval set."""
_SPLIT_WORDS = {"train", "training", "validation", "valid", "val", "dev", "test", "testing"}
_METADATA = {SOURCE_FILE, "dataset_info.json", "dataset_infos.json", "state.json"}


@dataclass(frozen=True)
class DataSource:
    """One dataset location, opened: ``label`` is the resolved name its records carry
    (``hf://datasets/org/name@<commit>`` for the hub), ``splits`` its split names
    (empty for a file or a single ``Dataset``)."""

    path: Path
    label: str
    layout: str  # "file" | "dataset" | "dataset_dict" | "hub"
    splits: tuple[str, ...] = ()
    revision: str | None = None


@dataclass(frozen=True)
class Part:
    """A file of a split: its records are named ``where:line`` (``table`` False) or,
    numbered across the split's tables, ``where:row N``."""

    path: Path
    where: str
    table: bool


def parse_hub(location: str, field: str) -> tuple[str, str | None]:
    """``hf://datasets/org/name[@revision]`` → (``org/name``, revision or None)."""
    repo, _, revision = location[len(HUB_PREFIX) :].partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo) or (revision == "" and "@" in location):
        raise InvalidInput(
            f"{location!r} is not a hub dataset location", where=field,
            hint="write hf://datasets/<org>/<name> or hf://datasets/<org>/<name>@<revision>",
        )  # fmt: skip
    return repo, revision or None


def hub_snapshot(location: str, field: str) -> tuple[Path, str]:
    """The cached snapshot of a hub dataset (downloaded unless cached) and its commit.

    Unavailable when the hub cannot be reached and the revision is not cached."""
    repo, revision = parse_hub(location, field)
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(
            repo, repo_type="dataset", revision=revision,
            allow_patterns=[f"*{suffix}" for suffix in DATA_SUFFIXES],
        ))  # fmt: skip
    except Exception as exc:
        raise Unavailable(
            f"cannot resolve {location} on the Hugging Face hub: {exc}", where=field,
            hint="this needs network access (or the snapshot in the local hub cache); "
            "else save the dataset with save_to_disk and name the directory",
        ) from exc  # fmt: skip
    # huggingface_hub's cache names each snapshot directory after its commit.
    return path, path.name


def copy_hub_dataset(location: str, field: str, dest: Path) -> Path:
    """Copy a hub dataset's data files into ``dest`` with ``SOURCE_FILE`` naming the
    commit, for the controller to store as an input; returns ``dest``."""
    snapshot, commit = hub_snapshot(location, field)
    repo, _ = parse_hub(location, field)
    if not _data_files(snapshot):
        raise InvalidInput(
            f"{location} (commit {commit}) has no Parquet, JSONL, JSON or Arrow files",
            where=field, hint="a dataset built by a loading script cannot be read; save it "
            "with save_to_disk (or push_to_hub, which writes Parquet) and name that",
        )  # fmt: skip
    for file in sorted(f for f in snapshot.rglob("*") if f.is_file()):
        target = dest / file.relative_to(snapshot)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)  # the cache's files are links to its blobs
    # Only the commit: the same commit reached by a branch or by its sha is one input.
    source = {"location": f"{HUB_PREFIX}{repo}@{commit}"}
    (dest / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
    return dest


def open_source(path: Path, label: str, field: str, hub: str | None = None) -> DataSource:
    """What lies at ``path``; ``label`` is the location the user gave (``hub``: the
    resolved ``hf://`` location of a cached snapshot). NotFound when nothing is there,
    InvalidInput for a directory that is not a dataset."""
    if path.is_file():
        return DataSource(path, label, "file")
    if not path.is_dir():
        raise NotFound(
            f"the dataset {label} does not exist", where=field,
            hint="give a JSONL, JSON or Parquet file, or a save_to_disk directory",
        )  # fmt: skip
    if (path / SOURCE_FILE).is_file():
        hub = json.loads((path / SOURCE_FILE).read_text())["location"]
    revision = hub.rpartition("@")[2] if hub else None
    name = hub or label
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        return DataSource(path, name, "dataset_dict", tuple(splits), revision)
    if (path / "state.json").is_file():
        return DataSource(path, name, "dataset", (), revision)
    if hub:
        splits = tuple(sorted({s for f in _data_files(path) if (s := _split_of(f, path))}))
        return DataSource(path, name, "hub", splits or ("train",), revision)
    raise InvalidInput(
        f"the dataset {label} is a directory, but not one written by save_to_disk "
        "(no dataset_dict.json or state.json in it)",
        where=field,
        hint="give a JSONL, JSON or Parquet file, or a directory written by datasets' save_to_disk",
    )


def held_out_split(source: DataSource, requested: str | None, field: str) -> str | None:
    """The split to evaluate on: ``requested`` (which must exist), else the dataset's
    own ``validation`` or ``test`` split, else None (split off from train)."""
    if requested is not None:
        _check_split(source, requested, field)
        return requested
    return next((s for s in HELD_OUT if s in source.splits), None)


def split_parts(source: DataSource, split: str, field: str) -> list[Part]:
    """The files of ``split`` in reading order."""
    _check_split(source, split, field)
    if source.layout == "file":
        return [Part(source.path, source.label, False)]
    where = f"{source.label}:{split}"
    if source.layout == "dataset":
        return _arrow_parts(source.path, source.label)
    if source.layout == "dataset_dict":
        return _arrow_parts(source.path / split, where)
    files = [f for f in _data_files(source.path) if (_split_of(f, source.path) or "train") == split]
    return [
        Part(f, where, True) if f.suffix in (".parquet", ".arrow")
        else Part(f, f"{source.label}/{f.relative_to(source.path).as_posix()}", False)
        for f in files
    ]  # fmt: skip


def read_table(path: Path, where: str) -> list[dict[str, Any]]:
    """The rows of a Parquet file or an Arrow stream file (what save_to_disk writes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".arrow":
            with pa.memory_map(str(path)) as stream:
                return pa.ipc.open_stream(stream).read_all().to_pylist()
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises its own error types for bad files
        raise InvalidInput(
            f"not a readable {path.suffix[1:]} file ({path.name}): {exc}", where=where,
            hint="write it again with datasets (save_to_disk, push_to_hub) or pyarrow",
        ) from exc  # fmt: skip


def _check_split(source: DataSource, split: str, field: str) -> None:
    if source.layout == "file":
        if split != "train":
            raise InvalidInput(
                f"{field} names split {split!r}, but {source.label} is one file",
                where=field, hint="splits belong to Hugging Face datasets; remove the field",
            )  # fmt: skip
        return
    if source.layout == "dataset":
        if split != "train":
            raise InvalidInput(
                f"{source.label} is one Dataset (save_to_disk of a Dataset), not a "
                f"DatasetDict: it has no split {split!r}",
                where=field, hint="remove dataset.split / dataset.eval_split",
            )  # fmt: skip
        return
    if split not in source.splits:
        raise InvalidInput(
            f"{source.label} has no split {split!r} (it has: {', '.join(source.splits)})",
            where=field, hint="set dataset.split (and dataset.eval_split) to one of them",
        )  # fmt: skip


def _arrow_parts(directory: Path, where: str) -> list[Part]:
    state = json.loads((directory / "state.json").read_text())
    return [Part(directory / f["filename"], where, True) for f in state.get("_data_files", [])]


def _data_files(root: Path) -> list[Path]:
    return sorted(
        f for f in root.rglob("*")
        if f.is_file() and f.suffix in DATA_SUFFIXES and f.name not in _METADATA
        and not any(part.startswith(".") for part in f.relative_to(root).parts)
    )  # fmt: skip


def _split_of(file: Path, root: Path) -> str | None:
    """The split a hub data file belongs to, as ``datasets`` names splits: a directory
    named after a split, else the file name up to its first ``-`` or ``.``
    (``train-00000-of-00001.parquet``, ``test.jsonl``); None when neither names one."""
    relative = file.relative_to(root)
    for part in relative.parts[:-1]:
        if part in _SPLIT_WORDS:
            return part
    stem = re.split(r"[-.]", relative.name, maxsplit=1)[0]
    words = re.split(r"[_\s]", stem)
    return stem if words[0] in _SPLIT_WORDS else None
