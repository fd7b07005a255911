"""`tuneship inspect-data` and `tuneship train` driven like a user would."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from tuneship.quickstart.conversations import write_jsonl

pytestmark = pytest.mark.e2e

TUNESHIP = str(Path(sys.executable).parent / "tuneship")
WORDS = [
    "the",
    "a",
    "sea",
    "ship",
    "gold",
    "map",
    "<|im_end|>",
    "[INST]",
    "</s>",
    "[/INST]",
    "<<SYS>>",
    "ahoy",
    "42",
    "!",
    "?",
    "é",
    "😀",
]


def arbitrary_conversations(count: int, seed: int) -> list[list[dict[str, str]]]:
    """Random multi-turn conversations whose text includes the templates' marker strings."""
    rng = random.Random(seed)
    say = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))  # noqa: E731
    conversations = []
    for _ in range(count):
        messages = [{"role": "system", "content": say()}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 4)):
            messages += [
                {"role": "user", "content": say()},
                {"role": "assistant", "content": say()},
            ]
        conversations.append(messages)
    return conversations


def write_spec(tmp_path: Path, base: Path, data: Path, **train: object) -> Path:
    spec = tmp_path / "spec.yaml"
    fields = "".join(f"\n  {key}: {value}" for key, value in train.items())
    spec.write_text(
        f"apiVersion: tuneship/v1\nmetadata: {{name: cli}}\nmodel: {{base: {base}}}\n"
        f"dataset: {{train: {data}, eval_fraction: 0.0, dedupe: false}}\n"
        f"train:{fields or ' {}'}\n",
        encoding="utf-8",
    )
    return spec


def tuneship(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TUNESHIP, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["tiny-llama2", "tiny-chatml"])
def test_inspect_data_json_gives_the_assistant_turns(
    name: str, tiny_llama2: Path, tiny_chatml: Path, tmp_path: Path
) -> None:
    base = tiny_llama2 if name == "tiny-llama2" else tiny_chatml
    conversations = arbitrary_conversations(12, seed=5)
    data = write_jsonl(tmp_path / "any.jsonl", [{"messages": c} for c in conversations])
    result = tuneship("inspect-data", str(write_spec(tmp_path, base, data)), "-n", "12", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report) == 12
    close = " </s>" if name == "tiny-llama2" else "<|im_end|>"
    for item, messages in zip(report, conversations, strict=True):
        replies = [m["content"].strip() + close for m in messages if m["role"] == "assistant"]
        assert [span.strip() for span in item["trained_spans"]] == replies
        assert item["trained_tokens"] > 0 and item["masked_tokens"] > 0


@pytest.mark.parametrize("name", ["tiny-llama2", "tiny-chatml"])
def test_inspect_data_shows_both_sides_of_a_preference_pair(
    name: str, tiny_llama2: Path, tiny_chatml: Path, tmp_path: Path
) -> None:
    base = tiny_llama2 if name == "tiny-llama2" else tiny_chatml
    pairs = []
    for chosen, rejected in zip(
        arbitrary_conversations(8, seed=7), arbitrary_conversations(8, seed=8), strict=True
    ):
        reply = rejected[-1]["content"]
        if reply == chosen[-1]["content"]:
            reply += " !"
        pairs.append({"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": reply})
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    spec = write_spec(tmp_path, base, data, objective="dpo")
    result = tuneship("inspect-data", str(spec), "-n", "8", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [item["side"] for item in report] == ["chosen", "rejected"] * 8
    close = " </s>" if name == "tiny-llama2" else "<|im_end|>"
    sides = zip(report[::2], report[1::2], strict=True)
    for (chosen, rejected), pair in zip(sides, pairs, strict=True):
        assert chosen["segments"][0] == rejected["segments"][0]  # the same prompt
        assert [s.strip() for s in chosen["trained_spans"]] == [
            pair["chosen"][0]["content"].strip() + close
        ]
        assert [s.strip() for s in rejected["trained_spans"]] == [pair["rejected"].strip() + close]

    human = tuneship("inspect-data", str(spec), "-n", "1")
    assert human.returncode == 0, human.stderr
    assert "─ chosen: " in human.stdout and "─ rejected: " in human.stdout


def test_train_writes_the_output_and_reports_it(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, tiny_chatml, sample_data / "chat" / "train.jsonl", max_steps=4)
    out = tmp_path / "out"
    result = tuneship("train", str(spec), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "done:" in result.stdout and "4 steps" in result.stdout
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "training-manifest.json").read_text())["metrics"]["steps"] == 4


def test_a_bad_record_is_reported_with_file_and_line(tiny_chatml: Path, tmp_path: Path) -> None:
    data = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Yo"},
                ]
            },
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]},
        ],
    )
    result = tuneship("inspect-data", str(write_spec(tmp_path, tiny_chatml, data)))
    assert result.returncode == 2
    assert f"{data}:2" in result.stderr and "unknown role 'bot'" in result.stderr
