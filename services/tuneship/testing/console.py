"""A web console in front of a controller with scripted or real stage workers, for tests.

``start_rig`` starts the cluster of ``tuneship.testing.cluster`` (scripted stages) and
the console on loopback ports; ``start_embedded_console`` the real stages of ``tuneship
run --console`` instead, without submitting anything; ``ConsoleUser`` is a browser
without JavaScript: it logs in, keeps the session cookie and posts forms with the CSRF
token of the page they came from.
"""

from __future__ import annotations

import json
import random
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from tuneship.client import PipelineClient
from tuneship.common.auth import AuthSettings, Token
from tuneship.common.settings import Settings
from tuneship.common.stages import STAGES
from tuneship.common.store.base import ArtifactStore
from tuneship.console import ConsoleSettings, RunningConsole, start_console
from tuneship.testing.cluster import Cluster, start_cluster
from tuneship.testing.stages import ScriptedStage

if TYPE_CHECKING:  # the real stages import torch: seconds that scripted tests skip
    from tuneship.cli.embedded import Embedded

TOKEN = Token("console-user-token")
REPORT = [
    {"quant_type": "f16", "size_bytes": 2_000_000, "bits_per_weight": 16.0, "perplexity": 3.1,
     "kld_mean": 0.0, "same_top_p": 100.0, "generation_tokens_per_s": 90.0, "verified": True,
     "baseline": True},
    {"quant_type": "q8_0", "size_bytes": 1_100_000, "bits_per_weight": 8.5, "perplexity": 3.11,
     "kld_mean": 0.002, "same_top_p": 99.0, "generation_tokens_per_s": 150.0, "verified": True},
    {"quant_type": "q4_k_m", "size_bytes": 700_000, "bits_per_weight": 4.9, "perplexity": 3.4,
     "kld_mean": 0.09, "same_top_p": 93.0, "generation_tokens_per_s": 210.0, "verified": True},
]  # fmt: skip
"""The quality report the scripted export stage reports (``q8_0`` recommended)."""


FILES = {
    "train": {"adapter_model.safetensors": random.Random(1).randbytes(300_000),
              "metrics.jsonl": b'{"step": 1, "loss": 1.0}\n'},
    "merge": {"model.safetensors": random.Random(2).randbytes(1_500_000)},
    "export": {"pirate-q8_0.gguf": random.Random(3).randbytes(2_300_000),
               "report.md": b"# Quality report\n\nq8_0 is recommended.\n"},
    "publish": {"Modelfile": b"FROM ./pirate-q8_0.gguf\n"},
}  # fmt: skip
"""What each scripted stage commits when the stages have a store (the merged model and
the GGUF are over one 1 MiB piece, so they stream in several)."""


def console_stages(
    store: ArtifactStore | None = None,
    files: dict[str, dict[str, bytes]] = FILES,
    **overrides: ScriptedStage,
) -> dict[str, ScriptedStage]:
    """Scripted stages whose training reports loss and eval loss and whose export
    reports ``REPORT``; with a ``store`` each commits its ``files`` there. ``overrides``
    replace stages by name."""
    stages = {name: ScriptedStage(name, store=store, files=files[name]) for name in STAGES}
    stages["train"] = ScriptedStage(
        "train", steps=12, step_s=0.02, eval_every=3,
        summary={"steps": 12, "final_loss": 0.0833, "eval_loss": 0.1},
        store=store, files=files["train"],
    )  # fmt: skip
    stages["export"] = ScriptedStage(
        "export", summary={"recommended": "q8_0", "quant_types": "f16,q4_k_m,q8_0",
                           "report": json.dumps(REPORT)},
        store=store, files=files["export"],
    )  # fmt: skip
    stages.update(overrides)
    return stages


@dataclass
class Rig:
    cluster: Cluster
    console: RunningConsole

    @property
    def url(self) -> str:
        return self.console.url

    def stop(self) -> None:
        self.console.stop()
        self.cluster.stop()


def start_rig(
    tmp_path: Path, stages: dict[str, ScriptedStage], tokens: bool = True,
    store: ArtifactStore | None = None,
) -> Rig:  # fmt: skip
    """The cluster (``tokens``: its user API takes ``TOKEN`` only; ``store``: where its
    controller reads the pipelines' files) and a console on loopback in front of it."""
    auth = AuthSettings(api_tokens=(TOKEN,)) if tokens else None
    cluster = start_cluster(tmp_path, stages, {}, auth=auth, store=store)
    address = cluster.controller.address

    def connect(token: str | None) -> PipelineClient:
        return PipelineClient(address, token=token)

    console = start_console(ConsoleSettings(address, port=0, refresh_s=1.0), connect)
    return Rig(cluster, console)


@dataclass(frozen=True)
class EmbeddedConsole:
    """The embedded controller with the real stage services, and the console."""

    embedded: Embedded
    console: RunningConsole

    @property
    def url(self) -> str:
        return self.console.url


def start_embedded_console(settings: Settings, stack: ExitStack) -> EmbeddedConsole:
    """What ``tuneship run --console 0`` starts, without submitting: the embedded
    controller and its real services under ``settings.data_dir`` (llama-server serves),
    and the console on loopback in front of it (no login), all stopped by ``stack``."""
    from tuneship.cli.run import console_beside
    from tuneship.testing.pipelines import start_embedded_llama

    embedded = start_embedded_llama(settings, stack)
    return EmbeddedConsole(embedded, console_beside(embedded.address, 0, stack))


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_NONCE = re.compile(r'name="nonce" value="([^"]+)"')


class ConsoleUser:
    """An HTTP client of the console that behaves like a browser without scripts."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30, follow_redirects=False)
        self.csrf = ""

    def login(self, token: str) -> httpx.Response:
        form = self.http.get("/login")
        nonce = _NONCE.search(form.text)
        assert nonce is not None, form.text
        answer = self.http.post("/login", data={"nonce": nonce.group(1), "token": token})
        if answer.status_code == 303:
            self.page("/")
        return answer

    def page(self, path: str) -> httpx.Response:
        """GET a page and keep the CSRF token of its forms."""
        answer = self.http.get(path)
        found = _CSRF.search(answer.text)
        if found:
            self.csrf = found.group(1)
        return answer

    def post(self, path: str, **fields: str) -> httpx.Response:
        return self.http.post(path, data={"csrf": self.csrf, **fields})

    def close(self) -> None:
        self.http.close()
