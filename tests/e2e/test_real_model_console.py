"""The web console on a real pretrained model: Gemma 3 270M through ``tuneship run
--console``, then its page, its files and its chat over HTTP, as a browser sends them.

The run keeps serving (``--keep-serving``) so the console stays up; the test reads the
pipeline page (stages, loss curve, quality report, the files with their sizes),
downloads the q8_0 GGUF through the console's link and checks it byte for byte against
the store and that llama.cpp's own reader takes it, and chats with the served model
through the console's stream. Slow: minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from tuneship.common.gguf_meta import read_gguf
from tuneship.common.settings import Settings
from tuneship.testing.realmodels import real_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]
TUNESHIP = str(Path(sys.executable).parent / "tuneship")

SPEC = """apiVersion: tuneship/v1
metadata: {{name: gemma-console}}
model: {{base: {base}}}
template: {{family: gemma}}
dataset: {{train: {data}/train.jsonl, eval: {data}/eval.jsonl}}
train: {{max_steps: 12, learning_rate: 0.001, per_device_train_batch_size: 4, save_steps: 6}}
export: {{quant_types: [q8_0], eval_tokens: 512}}
serve: {{smoke_prompts: ["Where is the treasure?"]}}
"""


def test_a_real_model_in_the_console(settings: Settings, sample_data: Path, tmp_path: Path) -> None:
    base = real_model("gemma3-270m", settings.cache_dir / "real-models")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(base=base, data=sample_data / "pirate"))
    data_dir = tmp_path / "run"
    env = {**os.environ, "COLUMNS": "200", "OLLAMA_HOST": "http://127.0.0.1:9"}
    process = subprocess.Popen(
        [TUNESHIP, "run", str(spec), "--data-dir", str(data_dir), "--console", "0",
         "--keep-serving"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    lines: list[str] = []
    for stream in (process.stdout, process.stderr):
        threading.Thread(target=lambda s=stream: lines.extend(s), daemon=True).start()
    try:
        deadline = time.monotonic() + 1500
        while not any("serving; Ctrl-C stops" in line for line in lines):
            assert process.poll() is None, "".join(lines)[-4000:]
            assert time.monotonic() < deadline, "".join(lines)[-4000:]
            time.sleep(1)
        said = next(line for line in lines if "console: " in line)
        url = said.split("console: ", 1)[1].split()[0]
        http = httpx.Client(base_url=url, timeout=120)
        home = http.get("/")  # no login: loopback in front of a tokenless controller
        assert home.status_code == 200
        pipeline_id = re.search(r'href="/pipelines/([^"/]+)"', home.text).group(1)
        page = http.get(f"/pipelines/{pipeline_id}").text
        assert 'id="pipeline-phase">succeeded' in page
        assert '<tr class="recommended">' in page and "q8_0" in page
        assert "<polyline" in page  # the loss curve of the real training
        files = dict(re.findall(r'<a href="([^"]+)" download>([^<]+)</a>', page))
        by_name = {name: link for link, name in files.items()}
        gguf = next(name for name in by_name if name.endswith("q8_0.gguf"))
        assert {"train/adapter/adapter_model.safetensors", "export/report.md"} <= set(by_name)

        target = tmp_path / "downloaded.gguf"
        digest = hashlib.sha256()
        with http.stream("GET", by_name[gguf]) as answer, target.open("wb") as out:
            assert answer.status_code == 200
            for piece in answer.iter_bytes(1 << 20):
                digest.update(piece)
                out.write(piece)
        stored = next((data_dir / "store").glob(f"pipelines/{pipeline_id}/stages/export/**/"
                                                 f"{Path(gguf).name}"))  # fmt: skip
        assert digest.hexdigest() == hashlib.sha256(stored.read_bytes()).hexdigest()
        info = read_gguf(target)  # llama.cpp's own gguf reader takes it
        assert info.architecture == "gemma3" and info.chat_template

        chat = http.get(f"/pipelines/{pipeline_id}/chat")
        csrf = re.search(r'name="csrf" value="([^"]+)"', chat.text).group(1)
        streamed = http.post(f"/pipelines/{pipeline_id}/chat/stream",
                             data={"csrf": csrf, "message": "Where is the treasure?",
                                   "history": "[]"})  # fmt: skip
        assert streamed.status_code == 200 and streamed.text.strip()
        print(json.dumps({"gguf": gguf, "bytes": target.stat().st_size,
                          "answer": streamed.text[:200]}))  # fmt: skip
    except AssertionError:
        print("".join(lines)[-6000:])  # what the run and its console said
        raise
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
