"""The real toolchain: doctor lists it, fixtures convert, llama-server loads and answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tuneship.common.llama_server import LlamaServer
from tuneship.common.toolchain import BINARIES, Toolchain

pytestmark = pytest.mark.integration


def test_doctor_toolchain_lists_every_piece_with_the_commit(toolchain: Toolchain) -> None:
    tuneship = Path(sys.executable).parent / "tuneship"
    done = subprocess.run(
        [str(tuneship), "doctor", "--toolchain"],
        capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for piece in (*BINARIES, "convert_hf_to_gguf.py"):
        assert piece in done.stdout
    assert f"llama.cpp commit: {toolchain.commit}" in done.stdout
    assert toolchain.commit != "unknown"


def test_doctor_reports_missing_toolchain_with_make_target(tmp_path: Path) -> None:
    tuneship = Path(sys.executable).parent / "tuneship"
    done = subprocess.run(
        [str(tuneship), "doctor", "--toolchain"],
        capture_output=True, text=True, timeout=60,
        env={"COLUMNS": "200", "PATH": "", "TUNESHIP_CACHE_DIR": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 1
    assert "missing" in done.stdout and "make toolchain" in done.stdout


@pytest.mark.parametrize("gguf_fixture", ["tiny_llama2_gguf", "tiny_chatml_gguf"])
def test_llama_server_loads_fixture_gguf_and_answers(
    gguf_fixture: str, toolchain: Toolchain, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    gguf: Path = request.getfixturevalue(gguf_fixture)
    server = LlamaServer(
        toolchain.binary("llama-server"), gguf, tmp_path / "server.log", context=512
    )
    with server:
        answer = server.chat(
            [{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=8,
            temperature=0,
        )
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert answer["usage"]["completion_tokens"] >= 1
        prompt = server.apply_template([{"role": "user", "content": "Hi"}])
    # llama.cpp strips the template's leading BOS text and adds the BOS id when tokenizing.
    expected = {
        "tiny_llama2_gguf": "[INST] Hi [/INST]",
        "tiny_chatml_gguf": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    }[gguf_fixture]
    assert prompt == expected
