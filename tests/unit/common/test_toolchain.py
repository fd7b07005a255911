"""Toolchain lookup: env override, then the cache, then PATH; clear errors when missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.errors import ToolchainMissing
from tuneship.common.settings import Settings
from tuneship.common.toolchain import BINARIES, BINDINGS, find_toolchain, pinned_version

pytestmark = pytest.mark.unit


def make_tree(root: Path, binaries=BINARIES, script=True, commit="abc1234") -> Path:
    (root / "bin").mkdir(parents=True)
    if script:
        (root / BINDINGS).parent.mkdir(parents=True)
        (root / BINDINGS).write_text("# bindings\n")
    for name in binaries:
        exe = root / "bin" / name
        exe.write_text("#!/bin/sh\necho version: 1 >&2\n")
        exe.chmod(0o755)
    if script:
        (root / "src").mkdir()
        (root / "src" / "convert_hf_to_gguf.py").write_text("print('convert')\n")
    (root / "toolchain.json").write_text(
        json.dumps({"llama_cpp_python": pinned_version(), "llama_cpp_commit": commit})
    )
    return root


def test_override_dir_wins_over_cache(tmp_path: Path) -> None:
    override = make_tree(tmp_path / "override", commit="override1")
    make_tree(tmp_path / "cache" / "llama.cpp" / pinned_version(), commit="cache1")
    settings = Settings(cache_dir=tmp_path / "cache", toolchain_dir=override, search_path="")
    toolchain = find_toolchain(settings)
    assert toolchain.binary("llama-server") == override / "bin" / "llama-server"
    assert toolchain.commit == "override1"
    assert toolchain.missing() == []


def test_cache_is_used_without_override(tmp_path: Path) -> None:
    cache_root = make_tree(tmp_path / "cache" / "llama.cpp" / pinned_version())
    toolchain = find_toolchain(Settings(cache_dir=tmp_path / "cache", search_path=""))
    assert toolchain.convert_script == cache_root / "src" / "convert_hf_to_gguf.py"
    assert toolchain.bindings_env() == {
        "PYTHONPATH": str(cache_root / "python"),
        "LLAMA_CPP_LIB_PATH": str(cache_root / "bin"),
    }
    assert toolchain.convert_command()[-1].endswith("convert_hf_to_gguf.py")


def test_path_is_the_last_resort_for_binaries(tmp_path: Path) -> None:
    make_tree(tmp_path / "cache" / "llama.cpp" / pinned_version(), binaries=BINARIES[:-1])
    on_path = tmp_path / "elsewhere"
    on_path.mkdir()
    (on_path / "llama-cli").write_text("#!/bin/sh\n")
    (on_path / "llama-cli").chmod(0o755)
    settings = Settings(cache_dir=tmp_path / "cache", search_path=str(on_path))
    assert find_toolchain(settings).binary("llama-cli") == on_path / "llama-cli"


def test_missing_pieces_name_the_make_target(tmp_path: Path) -> None:
    make_tree(
        tmp_path / "cache" / "llama.cpp" / pinned_version(), binaries=("llama-cli",), script=False
    )
    toolchain = find_toolchain(Settings(cache_dir=tmp_path / "cache", search_path=""))
    assert toolchain.missing() == [*BINARIES[:-1], "convert_hf_to_gguf.py", BINDINGS]
    with pytest.raises(ToolchainMissing) as caught:
        toolchain.require_all()
    assert "make toolchain" in str(caught.value)
    assert "llama-imatrix" in str(caught.value)
    with pytest.raises(ToolchainMissing, match="make toolchain"):
        toolchain.binary("llama-quantize")
    with pytest.raises(ToolchainMissing, match=r"convert_hf_to_gguf\.py"):
        toolchain.convert_command()
    with pytest.raises(ToolchainMissing, match="make toolchain"):
        toolchain.bindings_env()


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"TUNESHIP_CACHE_DIR": str(tmp_path), "TUNESHIP_TOOLCHAIN_DIR": "/opt/llama", "PATH": "/x"}
    )
    assert settings.cache_dir == tmp_path
    assert settings.toolchain_dir == Path("/opt/llama")
    assert settings.search_path == "/x"
    assert Settings.from_env({"HOME": "/home/u"}).cache_dir == Path("/home/u/.cache/tuneship")
