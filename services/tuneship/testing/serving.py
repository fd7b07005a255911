"""Helpers for serving tests with untrained tiny models.

An untrained model never ends its turn by itself; a stop string chosen from its own
greedy answer makes it stop after a few characters, which exercises the same path
(``done_reason: stop`` before the token limit) a trained model takes at its
end-of-turn token.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tuneship.common.errors import ToolchainMissing


def early_stop_string(answer: str, length: int = 3) -> str:
    """A substring of ``answer`` whose first occurrence follows some visible text, so that
    stopping there leaves a short, non-empty answer."""
    start = len(answer) - len(answer.lstrip())
    for at in range(start + 1, len(answer) - length + 1):
        candidate = answer[at : at + length]
        if candidate.strip() and answer.find(candidate) == at:
            return candidate
    raise ValueError(f"no usable stop string in {answer!r}")


def build_go_renderer(tool_dir: Path, out_dir: Path) -> Path:
    """Build the Go template renderer in ``tool_dir`` (tests/tools/gotemplate) into
    ``out_dir`` and return the binary; ToolchainMissing when Go is not installed."""
    go = shutil.which("go")
    if go is None:
        raise ToolchainMissing(
            "go not found on PATH: the Go template parity tests cannot run",
            hint="run `make test` (it installs Debian's golang-go) or install Go 1.19 or newer",
        )
    # Offline and with the installed Go only: no module downloads, and GOTOOLCHAIN=local
    # keeps Go 1.21+ from fetching a newer toolchain.
    env = {
        **os.environ, "GOCACHE": str(out_dir / "cache"), "GOFLAGS": "-mod=mod",
        "GOPROXY": "off", "GOTOOLCHAIN": "local",
    }  # fmt: skip
    binary = out_dir / "gotemplate"
    subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=tool_dir, env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return binary


def go_render(
    renderer: Path, template: str, conversations: list[list[dict[str, str]]]
) -> list[str]:
    """Render ``template`` for each conversation with Go's text/template, as Ollama does."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "template.gotmpl"
        source.write_text(template, encoding="utf-8")
        done = subprocess.run(
            [str(renderer), str(source)], input=json.dumps(conversations),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    if done.returncode != 0:
        raise ValueError(f"Go could not render the template: {done.stderr.strip()}")
    return list(json.loads(done.stdout))
