"""Every dataset format the spec accepts goes through train → merge → export → publish.

The export reads the conversations with the same reader as training (and splits them
the same way), so a dataset that trains also exports; errors name the user's file.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from tuneship.common.settings import Settings
from tuneship.testing.pipelines import run_batch

pytestmark = pytest.mark.integration

SPEC = """apiVersion: tuneship/v1
metadata: {{name: {name}}}
model: {{base: {base}}}
dataset: {{train: {train}, format: {shape}}}
train: {{max_steps: 6, learning_rate: 0.003}}
export: {{quant_types: [q8_0], imatrix: never}}
serve: {{smoke_prompts: []}}
"""


def _messages(conversation: list[dict[str, str]]) -> dict[str, Any]:
    return {"messages": conversation}


def _sharegpt(conversation: list[dict[str, str]]) -> dict[str, Any]:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[m["role"]], "value": m["content"]}
                              for m in conversation]}  # fmt: skip


def _prompt_completion(conversation: list[dict[str, str]]) -> dict[str, Any]:
    return {"prompt": conversation[:-1], "completion": conversation[-1:]}


def write_dataset(conversations: list[list[dict[str, str]]], fmt: str, out: Path) -> Path:
    """``conversations`` written in ``fmt`` (the name says shape and file type)."""
    shape = {"sharegpt": _sharegpt, "prompt": _prompt_completion}.get(fmt.split("-")[0], _messages)
    records = [shape(c) for c in conversations]
    if fmt.endswith("parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = out / "train.parquet"
        pq.write_table(pa.Table.from_pylist(records), path)
    elif fmt.endswith("json"):
        path = out / "train.json"
        path.write_text(json.dumps(records, indent=1))
    else:
        path = out / "train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


FORMATS = {  # name → dataset.format
    "messages-jsonl": "messages",
    "sharegpt-jsonl": "sharegpt",
    "prompt-completion-jsonl": "prompt_completion",
    "messages-json": "auto",
    "messages-parquet": "auto",
}


def test_every_dataset_format_trains_exports_and_publishes(
    tiny_chatml: Path, sample_data: Path, settings: Settings, tmp_path: Path
) -> None:
    lines = (sample_data / "pirate" / "train.jsonl").read_text().splitlines()
    conversations = [json.loads(line)["messages"] for line in lines]
    specs = []
    for fmt, shape in FORMATS.items():
        folder = tmp_path / fmt
        folder.mkdir()
        train = write_dataset(conversations, fmt, folder)
        specs.append(SPEC.format(name=fmt, base=tiny_chatml, train=train, shape=shape))
    settings = dataclasses.replace(settings, data_dir=tmp_path / "data")
    with ExitStack() as stack:
        _, finals = run_batch(settings, specs, stack)
        for final in finals:
            assert final.stage("export").summary["quant_types"] == "f16,q8_0"
            assert final.stage("publish").summary["model"]
