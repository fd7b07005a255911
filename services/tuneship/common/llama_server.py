"""A managed ``llama-server`` process on loopback, and a small client for its HTTP API.

Used wherever a GGUF must be loaded for real: export verification (does it load, does
the rendered prompt match), evaluation, and the llama-server serving backend.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.common.errors import FailedPrecondition, Unavailable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class LlamaServer:
    """One ``llama-server`` serving one GGUF. Use as a context manager.

    ``start`` raises ``FailedPrecondition`` with the tail of the server log when the
    model does not load (a wrong shape, a bad file), and ``Unavailable`` when the
    server does not become healthy in time.
    """

    binary: Path
    model: Path
    log_path: Path
    context: int = 2048
    threads: int = 2
    host: str = "127.0.0.1"
    port: int = 0
    extra_args: list[str] = field(default_factory=list)
    startup_timeout_s: float = 120.0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LlamaServer:
        """Launch the server and wait until ``/health`` answers ok."""
        self.port = self.port or free_port(self.host)
        argv = [
            str(self.binary), "-m", str(self.model), "--host", self.host, "--port", str(self.port),
            "-c", str(self.context), "-t", str(self.threads), "--jinja", "--no-webui",
            *self.extra_args,
        ]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FailedPrecondition(
                    f"llama-server could not load {self.model.name} "
                    f"(exit {self.process.returncode}):\n{self.log_tail()}",
                    where=str(self.model),
                    hint="run `tuneship doctor` on the GGUF to see what is inconsistent",
                )
            if self._healthy():
                return self
            time.sleep(0.2)
        self.stop()
        raise Unavailable(
            f"llama-server did not become healthy within {self.startup_timeout_s:.0f}s",
            where=str(self.log_path),
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the server (kill if it does not exit in ``timeout_s``)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def post(self, path: str, payload: dict[str, Any], timeout_s: float = 120.0) -> dict[str, Any]:
        """POST JSON to the server and return the decoded JSON answer."""
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise FailedPrecondition(f"llama-server {path} answered {exc.code}: {body}") from exc
        except (urllib.error.URLError, ConnectionError) as exc:
            raise Unavailable(f"llama-server at {self.url} is not reachable: {exc}") from exc

    def chat(self, messages: list[dict[str, str]], **options: Any) -> dict[str, Any]:
        """One OpenAI-style chat completion (non-streaming); returns the whole answer."""
        return self.post("/v1/chat/completions", {"messages": messages, **options})

    def stream_chat(self, messages: list[dict[str, str]], **options: Any) -> Iterator[str]:
        """Stream the answer's text pieces as the server produces them."""
        for text, _finish, _tokens in self.stream_chat_chunks(messages, **options):
            if text:
                yield text

    def stream_chat_chunks(
        self, messages: list[dict[str, str]], **options: Any
    ) -> Iterator[tuple[str, str | None, int | None]]:
        """Stream ``(text, finish_reason, tokens)``; the last one carries ``"stop"`` (end of
        turn or a stop string) or ``"length"`` (``max_tokens`` reached) and the number of
        generated tokens."""
        payload = {"messages": messages, "stream": True, **options}
        request = urllib.request.Request(
            self.url + "/v1/chat/completions",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            response = urllib.request.urlopen(request, timeout=300)
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise FailedPrecondition(f"llama-server chat answered {exc.code}: {body}") from exc
        except (urllib.error.URLError, ConnectionError) as exc:
            raise Unavailable(f"llama-server at {self.url} is not reachable: {exc}") from exc
        with response:
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                choice = chunk["choices"][0]
                text = choice.get("delta", {}).get("content") or ""
                finish = choice.get("finish_reason")
                tokens = chunk.get("timings", {}).get("predicted_n") if finish else None
                if text or finish:
                    yield text, finish, tokens

    def running(self) -> bool:
        """True while the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def apply_template(self, messages: list[dict[str, str]]) -> str:
        """The prompt the server renders from the GGUF's chat template (generation prompt on)."""
        return str(self.post("/apply-template", {"messages": messages})["prompt"])

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids as llama.cpp tokenizes ``text`` (no BOS added)."""
        answer = self.post(
            "/tokenize", {"content": text, "add_special": False, "parse_special": special}
        )
        return [int(t) for t in answer["tokens"]]

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
