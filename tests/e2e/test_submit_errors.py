"""What ``tuneship submit`` says when the controller answers with an error, and when
there is no controller: the two are never confused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tuneship.common.store import LocalStore
from tuneship.controller.app import ControllerSettings, start_controller
from tuneship.controller.inputs import input_uploader

pytestmark = pytest.mark.e2e
TUNESHIP = str(Path(sys.executable).parent / "tuneship")


def test_an_unreachable_hub_is_not_an_unreachable_controller(tmp_path: Path) -> None:
    controller = start_controller(
        ControllerSettings(state_url=f"sqlite:///{tmp_path / 'state.db'}",
                           workers={s: "127.0.0.1:9" for s in
                                    ("train", "merge", "export", "publish")}),
        input_uploader(LocalStore(tmp_path / "store")),
    )  # fmt: skip
    try:
        data = tmp_path / "train.jsonl"
        data.write_text('{"messages": [{"role": "user", "content": "hi"}, '
                        '{"role": "assistant", "content": "hello"}]}\n')  # fmt: skip
        spec = tmp_path / "hub.yaml"
        spec.write_text(
            f"apiVersion: tuneship/v1\nmetadata: {{name: hub}}\n"
            f"model: {{base: hf://nobody/no-model}}\ndataset: {{train: {data}}}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESHIP_STORE")}
        env["HF_HOME"] = str(tmp_path / "hf")
        done = subprocess.run([TUNESHIP, "submit", str(spec), "--controller", controller.address],
                              capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
        assert done.returncode == 2
        assert "cannot download hf://nobody/no-model from the Hugging Face hub" in done.stderr
        assert "not reachable" not in done.stderr and "Traceback" not in done.stderr
    finally:
        controller.stop()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    gone = subprocess.run([TUNESHIP, "list", "--controller", f"127.0.0.1:{port}"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert gone.returncode == 2
    assert f"controller at 127.0.0.1:{port} is not reachable" in gone.stderr
