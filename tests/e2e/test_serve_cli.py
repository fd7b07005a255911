"""``tuneship modelfile``, ``publish`` and ``chat`` driven like a user, in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tuneship.common.llama_server import free_port
from tuneship.testing.ollama import OllamaTestServer
from tuneship.testing.serving import early_stop_string

pytestmark = pytest.mark.e2e

TUNESHIP = str(Path(sys.executable).parent / "tuneship")


def run(args: list[str], env_dir: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TUNESHIP_DATA_DIR": str(env_dir),
        "OLLAMA_HOST": f"127.0.0.1:{free_port()}",  # nobody listens there
        "COLUMNS": "200",
    }
    return subprocess.run(
        [TUNESHIP, *args], input=stdin, capture_output=True, text=True, env=env, timeout=300
    )


def test_modelfile_prints_template_stops_and_system(tiny_llama2_gguf: Path, tmp_path: Path) -> None:
    done = run(["modelfile", str(tiny_llama2_gguf), "--system", "Be brief."], tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith(f"FROM ./{tiny_llama2_gguf.name}\n")
    assert 'TEMPLATE """{{ $first := true }}' in text and "[/INST]" in text
    assert 'PARAMETER stop "</s>"' in text and "PARAMETER num_ctx 2048" in text
    assert 'SYSTEM "Be brief."' in text
    jinja = run(["modelfile", str(tiny_llama2_gguf), "--template-mode", "jinja"], tmp_path)
    assert "TEMPLATE" not in jinja.stdout


def test_publish_then_chat_on_llama_server(tiny_chatml_gguf: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    base = ["publish", str(tiny_chatml_gguf), "--name", "tiny", "--backend", "llama-server"]
    failed = run([*base, "--max-tokens", "24", "--report", str(report)], tmp_path)
    assert failed.returncode == 2 and "smoke test failed" in failed.stderr
    assert "left as it was" in failed.stderr
    answer = json.loads(report.read_text())["smoke"][0]["text"]

    stop = early_stop_string(answer)
    done = run([*base, "--stop", stop, "--report", str(report)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "smoke test passed" in done.stdout and "tiny:latest" in done.stdout
    result = json.loads(report.read_text())
    assert result["smoke_passed"] and result["publish_to_first_token_s"] > 0

    chat = run(
        ["chat", "tiny", "--backend", "llama-server", "--max-tokens", "12", "--temperature", "0"],
        tmp_path,
        stdin="Hello! Who are you?\n/reset\nTell me more.\n/bye\nnever sent\n",
    )
    assert chat.returncode == 0, chat.stderr
    lines = chat.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == result["smoke"][0]["text"]
    assert "history cleared" in chat.stderr

    unknown = run(["chat", "nobody", "--backend", "llama-server"], tmp_path, stdin="hi\n")
    assert unknown.returncode == 2 and "not published" in unknown.stderr


def test_auto_uses_ollama_when_it_answers(tiny_chatml_gguf: Path, tmp_path: Path) -> None:
    with OllamaTestServer(version="0.12.0") as server:
        args = ["publish", str(tiny_chatml_gguf), "--name", "tiny", "--ollama-url", server.url]
        done = run(args, tmp_path)
        assert done.returncode == 0, done.stderr
        assert "on ollama (go template" in done.stdout
        assert len(server.models) == 2 and "tiny:latest" in server.models
        chat = run(["chat", "tiny", "--ollama-url", server.url], tmp_path, stdin="hi\n")
        assert chat.stdout.strip() == server.reply
