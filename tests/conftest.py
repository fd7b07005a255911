"""Shared pytest fixtures: offline tiny models, sample data and the llama.cpp toolchain.

Everything is built once per test session from a fixed seed; nothing is downloaded.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuneship.common.settings import Settings
from tuneship.common.toolchain import Toolchain, find_toolchain
from tuneship.quickstart.conversations import write_sample_datasets
from tuneship.quickstart.tiny_models import build_fixture


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings read from the environment the tests run in (as the CLI would)."""
    return Settings.from_env()


@pytest.fixture(scope="session")
def toolchain(settings: Settings) -> Toolchain:
    """The complete llama.cpp toolchain; `make test` builds it before pytest runs."""
    return find_toolchain(settings).require_all()


@pytest.fixture(scope="session")
def tiny_llama2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama2 (SentencePiece, [INST] template, no pad token). Treat as read-only."""
    return build_fixture("tiny-llama2", tmp_path_factory.mktemp("fixtures") / "tiny-llama2")


@pytest.fixture(scope="session")
def tiny_chatml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-chatml (tokenizer.json only, ChatML specials, tied embeddings). Read-only."""
    return build_fixture("tiny-chatml", tmp_path_factory.mktemp("fixtures") / "tiny-chatml")


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sample datasets: {chat,pirate}/{train,eval}.jsonl and sharegpt-{train,eval}.jsonl."""
    return write_sample_datasets(tmp_path_factory.mktemp("data"))


def convert_to_gguf(toolchain: Toolchain, model: Path, out: Path, outtype: str = "f16") -> Path:
    """Convert an HF model directory with the pinned convert script (test helper)."""
    command = [
        *toolchain.convert_command(),
        str(model),
        "--outfile",
        str(out),
        "--outtype",
        outtype,
    ]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def tiny_chatml_gguf(toolchain: Toolchain, tiny_chatml: Path, tmp_path_factory) -> Path:
    """tiny-chatml converted to an f16 GGUF (untrained weights). Read-only."""
    return convert_to_gguf(toolchain, tiny_chatml, tmp_path_factory.mktemp("gguf") / "chatml.gguf")


@pytest.fixture(scope="session")
def tiny_llama2_gguf(toolchain: Toolchain, tiny_llama2: Path, tmp_path_factory) -> Path:
    """tiny-llama2 converted to an f16 GGUF (untrained weights). Read-only."""
    return convert_to_gguf(toolchain, tiny_llama2, tmp_path_factory.mktemp("gguf") / "llama2.gguf")


@pytest.fixture(scope="session")
def moto_server_bin() -> Path:
    """moto's standalone S3 server: TUNESHIP_MOTO_SERVER, else .venv-s3 (make s3-venv)."""
    import os

    from tuneship.testing.s3server import find_moto_server

    explicit = os.environ.get("TUNESHIP_MOTO_SERVER")
    return find_moto_server(Path(__file__).parent.parent, Path(explicit) if explicit else None)


@pytest.fixture(scope="session")
def s3_server(moto_server_bin: Path):
    """A real S3 server process on loopback for the whole session (use a fresh bucket)."""
    from tuneship.testing.s3server import s3_server as start

    with start(moto_server_bin) as server:
        yield server


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on loopback for the whole session (Debian's package,
    `make postgres-server`). Use a fresh database per test (``postgres_url``); a test
    that stops or restarts a server starts its own (tuneship.testing.postgres)."""
    from tuneship.testing.postgres import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres) -> str:
    """The SQLAlchemy URL of a new, empty database on the session's PostgreSQL server."""
    return postgres.create_database()


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty controller state database: once SQLite, once PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
    else:
        yield request.getfixturevalue("postgres").create_database()


@pytest.fixture
def browser():
    """Debian's headless Chromium driven by selenium, at 1280x800 (`make browser`)."""
    from tuneship.testing.browser import headless_chromium

    with headless_chromium() as driver:
        yield driver


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where a test leaves files for people to look at (screenshots):
    ``$TUNESHIP_TEST_ARTIFACTS/<the test module's ARTIFACTS>``, else the test's tmp
    directory."""
    import os

    root = os.environ.get("TUNESHIP_TEST_ARTIFACTS")
    folder = Path(root) / request.module.ARTIFACTS if root else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
