"""The real chain: trained by the trainer → merged → f16 → q4_k_m, q5_k_m, q8_0, iq4_xs.

Every GGUF loads, answers and passes template parity; the quantized model says what
training taught it and stops where training taught it to stop.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.events import ListSink
from tuneship.common.llama_server import LlamaServer
from tuneship.common.spec import PipelineSpec
from tuneship.common.toolchain import Toolchain
from tuneship.converter import export
from tuneship.merger import merge
from tuneship.quickstart.conversations import PIRATE_REPLY
from tuneship.trainer import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def make_spec(base: Path, data: Path) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "apiVersion": "tuneship/v1",
            "metadata": {"name": "pirate"},
            "model": {"base": str(base)},
            "dataset": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")},
            "train": {"max_steps": 80, "learning_rate": 3e-3, "save_steps": 80},
            "export": {"quant_types": ["q4_k_m", "q5_k_m", "q8_0", "iq4_xs"]},
        }
    )


@pytest.mark.parametrize("fixture", ["tiny_llama2", "tiny_chatml"])
def test_trained_model_exports_and_answers_like_it_was_trained(
    fixture: str, request: pytest.FixtureRequest, sample_data: Path, toolchain: Toolchain,
    tmp_path: Path,
) -> None:  # fmt: skip
    base = request.getfixturevalue(fixture)
    spec = make_spec(base, sample_data / "pirate")
    trained = train(spec, base, tmp_path / "train_out", ListSink())
    merged = merge(spec, base, trained.out, tmp_path / "merged", ListSink())
    manifest = json.loads((trained.out / "training-manifest.json").read_text())
    assert merged.vocab.tokenizer_size == manifest["vocab"]["tokenizer_size_after"]
    result = export(spec, merged.out, tmp_path / "export", ListSink(), toolchain)
    assert all(r.verified for r in result.report.rows)
    assert result.report.recommended is not None
    (tmp_path / "report.md").write_text((result.out / "report.md").read_text())
    server = LlamaServer(toolchain.binary("llama-server"), result.ggufs["q4_k_m"],
                         tmp_path / "server.log", context=512)  # fmt: skip
    with server:
        answer = server.chat([{"role": "user", "content": "Where is the treasure?"}],
                             max_tokens=48, temperature=0)  # fmt: skip
    choice = answer["choices"][0]
    assert choice["message"]["content"].strip() == PIRATE_REPLY
    assert choice["finish_reason"] == "stop"
