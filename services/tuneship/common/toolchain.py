"""Finding the pinned llama.cpp toolchain.

One llama.cpp source serves everything: the ``vendor/llama.cpp`` tree of the
``llama-cpp-python`` sdist pinned in ``llama-cpp-python.version``. ``make toolchain``
(``scripts/build-llama-cpp.sh``) builds it into
``<cache>/llama.cpp/<version>/`` with this layout::

    bin/            llama-quantize, llama-imatrix, llama-perplexity, llama-server,
                    llama-cli and the shared libraries they load
    src/            the llama.cpp tree: convert_hf_to_gguf.py, gguf-py/, conversion/
    python/         the sdist's own ctypes bindings of libllama (``llama_cpp.llama_cpp``),
                    which score GGUFs on exact token ids (``converter.llama_eval``)
    toolchain.json  version and llama.cpp commit, written last (the tree is complete)

Lookup order, per piece: ``Settings.toolchain_dir`` (``TUNESHIP_TOOLCHAIN_DIR``), then
the cache, then ``PATH`` (binaries only).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tuneship.common.errors import ToolchainMissing
from tuneship.common.settings import Settings

BINARIES = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-server", "llama-cli")
CONVERT_SCRIPT = "convert_hf_to_gguf.py"
BINDINGS = "python/llama_cpp/llama_cpp.py"
BUILD_HINT = "run `make toolchain` (about 6 minutes on 2 cores) or set TUNESHIP_TOOLCHAIN_DIR"


def pinned_version() -> str:
    """The pinned ``llama-cpp-python`` version whose vendored llama.cpp is used."""
    text = resources.files("tuneship.common").joinpath("llama-cpp-python.version").read_text()
    return text.strip()


@dataclass(frozen=True)
class Toolchain:
    """Resolved locations of the llama.cpp pieces. Missing ones are absent from the maps."""

    version: str
    commit: str
    roots: tuple[Path, ...]
    binaries: dict[str, Path] = field(default_factory=dict)
    convert_script: Path | None = None
    bindings: Path | None = None
    """The directory to put on ``PYTHONPATH`` for ``import llama_cpp.llama_cpp``."""

    def binary(self, name: str) -> Path:
        """Path of a llama.cpp binary; ``ToolchainMissing`` names the make target if absent."""
        if name not in self.binaries:
            searched = ", ".join(str(r / "bin") for r in self.roots) or "no toolchain dir"
            raise ToolchainMissing(
                f"llama.cpp binary {name!r} not found (searched {searched} and PATH)",
                hint=BUILD_HINT,
            )
        return self.binaries[name]

    def convert_command(self) -> list[str]:
        """argv prefix for ``convert_hf_to_gguf.py`` with the same tree's ``gguf-py``."""
        if self.convert_script is None:
            raise ToolchainMissing(
                f"{CONVERT_SCRIPT} not found in any toolchain tree ({self._roots_text()})",
                hint=BUILD_HINT,
            )
        return [sys.executable, str(self.convert_script)]

    def bindings_env(self) -> dict[str, str]:
        """Environment for a Python subprocess that loads the pinned ``libllama`` through
        the sdist's bindings (``PYTHONPATH`` and ``LLAMA_CPP_LIB_PATH``)."""
        if self.bindings is None or "llama-server" not in self.binaries:
            raise ToolchainMissing(
                f"the llama.cpp Python bindings ({BINDINGS}) or libllama are missing "
                f"({self._roots_text()})",
                hint=BUILD_HINT,
            )
        return {
            "PYTHONPATH": str(self.bindings),
            "LLAMA_CPP_LIB_PATH": str(self.binaries["llama-server"].parent),
        }

    def missing(self) -> list[str]:
        """Names of the pieces that were not found."""
        absent = [name for name in BINARIES if name not in self.binaries]
        absent += [CONVERT_SCRIPT] if self.convert_script is None else []
        return absent + ([BINDINGS] if self.bindings is None else [])

    def require_all(self) -> Toolchain:
        """Return self, or raise ``ToolchainMissing`` listing every missing piece."""
        absent = self.missing()
        if absent:
            raise ToolchainMissing(
                f"llama.cpp toolchain {self.version} is incomplete: missing {', '.join(absent)}"
                f" (searched {self._roots_text()} and PATH)",
                hint=BUILD_HINT,
            )
        return self

    def _roots_text(self) -> str:
        return ", ".join(str(r) for r in self.roots) or "no toolchain dir"


def default_root(settings: Settings) -> Path:
    """Where ``make toolchain`` puts the pinned build."""
    return settings.cache_dir / "llama.cpp" / pinned_version()


def find_toolchain(settings: Settings) -> Toolchain:
    """Resolve every piece of the toolchain (never raises; see ``Toolchain.require_all``)."""
    roots = tuple(
        r for r in (settings.toolchain_dir, default_root(settings)) if r is not None and r.is_dir()
    )
    binaries: dict[str, Path] = {}
    for name in BINARIES:
        candidates = [root / "bin" / name for root in roots]
        on_path = shutil.which(name, path=settings.search_path or None)
        candidates += [Path(on_path)] if on_path else []
        found = next((c for c in candidates if c.is_file()), None)
        if found is not None:
            binaries[name] = found
    script = next(
        (r / "src" / CONVERT_SCRIPT for r in roots if (r / "src" / CONVERT_SCRIPT).is_file()), None
    )
    bindings = next((r / "python" for r in roots if (r / BINDINGS).is_file()), None)
    version, commit = pinned_version(), "unknown"
    for root in roots:
        info = root / "toolchain.json"
        if info.is_file():
            meta = json.loads(info.read_text())
            version, commit = (
                meta.get("llama_cpp_python", version),
                meta.get("llama_cpp_commit", commit),
            )
            break
    return Toolchain(version, commit, roots, binaries, script, bindings)


def binary_version(path: Path) -> str:
    """The version line a llama.cpp binary prints for ``--version`` (empty if none)."""
    try:
        done = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        return f"cannot run: {exc}"
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.startswith("version")]
    return lines[0] if lines else ""
