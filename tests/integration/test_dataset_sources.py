"""Each new dataset shape and source goes through train → merge → export → publish, the
way a cluster runs it: the controller stores the inputs (a save_to_disk directory or a
hub snapshot as one input of many files), the workers fetch them from the store.

Alpaca records in ``hf://datasets/…`` resolved by the real huggingface_hub from a local
hub cache (the training manifest records the commit); prompt/response pairs in a
``DatasetDict.save_to_disk`` directory (its validation split held out); messages under
other names read through ``dataset.columns``.
"""

from __future__ import annotations

import dataclasses
import io
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from tuneship.common.settings import Settings
from tuneship.common.store import LocalStore
from tuneship.common.store.commit import read_manifest
from tuneship.testing.hubcache import cache_dataset, offline_hub
from tuneship.testing.pipelines import run_batch

pytestmark = pytest.mark.integration

SPEC = """apiVersion: tuneship/v1
metadata: {{name: {name}}}
model: {{base: {base}}}
dataset: {{train: '{train}', {extra}}}
train: {{max_steps: 6, learning_rate: 0.003}}
export: {{quant_types: [q8_0], imatrix: never}}
serve: {{smoke_prompts: []}}
"""


def exchanges(conversations: list[list[dict[str, str]]]) -> list[dict[str, str]]:
    """Every user turn and the reply to it, with the conversation's system prompt."""
    found = []
    for conversation in conversations:
        system = conversation[0]["content"] if conversation[0]["role"] == "system" else ""
        turns = conversation[1:] if system else conversation
        for user, reply in zip(turns[::2], turns[1::2], strict=True):
            found.append({"system": system, "user": user["content"], "reply": reply["content"]})
    return found


def parquet(records: list[dict[str, Any]], path: Path | None = None) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), path or buffer)
    return buffer.getvalue()


def jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_sources(conversations: list, out: Path, hub: Path) -> dict[str, tuple[str, str]]:
    """name → (dataset.train, the rest of the dataset section): each new shape and each
    new source once, two to a pipeline where they are independent (a pipeline costs
    seconds of training, merging, converting and publishing; the reading is the point)."""
    import datasets

    pairs = exchanges(conversations)
    alpaca = [{"instruction": p["user"], "input": "", "output": p["reply"],
               "system": p["system"]} for p in pairs]  # fmt: skip
    answers = [{"question": p["user"], "answer": p["reply"]} for p in pairs]
    dialogs = [{"dialog": [{"speaker": m["role"], "text": m["content"]} for m in c]}
               for c in conversations]  # fmt: skip
    parquet(dialogs, out / "dialogs.parquet")
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(answers[:-8]),
         "validation": datasets.Dataset.from_list(answers[-8:])}
    ).save_to_disk(str(out / "saved"))  # fmt: skip
    cache_dataset(hub, "tuneship/pirate-alpaca", {
        "data/train-00000-of-00001.parquet": parquet(alpaca),
        "README.md": b"---\nlicense: mit\n---\n",
    })  # fmt: skip
    return {
        "hub-alpaca": ("hf://datasets/tuneship/pirate-alpaca@main", "format: alpaca"),
        "saved-prompt-response": (str(out / "saved"), "format: prompt_response"),
        "columns": (
            str(out / "dialogs.parquet"),
            "columns: {messages: dialog, role: speaker, content: text}",
        ),
    }


def test_every_dataset_source_trains_exports_and_publishes(
    tiny_chatml: Path, sample_data: Path, settings: Settings, tmp_path: Path
) -> None:
    lines = (sample_data / "pirate" / "train.jsonl").read_text().splitlines()
    conversations = [json.loads(line)["messages"] for line in lines]
    sources = write_sources(conversations, tmp_path, tmp_path / "hub-cache")
    specs = [
        SPEC.format(name=name, base=tiny_chatml, train=train, extra=extra)
        for name, (train, extra) in sources.items()
    ]
    settings = dataclasses.replace(settings, data_dir=tmp_path / "data")
    with ExitStack() as stack:
        stack.enter_context(offline_hub(tmp_path / "hub-cache"))
        embedded, finals = run_batch(settings, specs, stack)
        manifests = {f.name: training_manifest(embedded.store, f.stage("train").outputs)
                     for f in finals}  # fmt: skip
        for final in finals:
            assert final.stage("export").summary["quant_types"] == "f16,q8_0"
            assert final.stage("publish").summary["model"]
    hub = manifests["hub-alpaca"]["dataset"]
    refs = tmp_path / "hub-cache" / "datasets--tuneship--pirate-alpaca" / "refs"
    commit = (refs / "main").read_text()  # what the branch pointed at when it was resolved
    assert hub["revision"] == commit and hub["train"] == "hf://datasets/tuneship/pirate-alpaca@main"
    assert hub["sources"]["train"] == f"hf://datasets/tuneship/pirate-alpaca@{commit}:train"
    pairs = len(exchanges(conversations))
    assert hub["train_examples"] + hub["eval_examples"] + hub["duplicates_removed"] == pairs
    saved = manifests["saved-prompt-response"]["dataset"]
    assert saved["sources"]["eval"].endswith("saved:validation")
    assert saved["eval_examples"] == 8


def training_manifest(store: LocalStore, outputs: dict[str, str]) -> dict[str, Any]:
    manifest = read_manifest(store, outputs["train"])
    return json.loads((store.root / manifest.root / "training-manifest.json").read_text())
