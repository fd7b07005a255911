"""Operator settings: read from the environment once, at the entry point, and passed down.

No module below an entry point reads ``os.environ``; it receives a ``Settings`` (or a
``StoreSettings``, a ``ControllerSettings`` ...) derived from one ``TuneshipEnv``,
which ``load_env`` builds from the environment mapping the entry point hands it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tuneship.common.settings.model import SERVICES, TuneshipEnv, is_secret, variable
from tuneship.common.settings.source import LoadedEnv, load_env

__all__ = [
    "SERVICES",
    "LoadedEnv",
    "Settings",
    "TuneshipEnv",
    "is_secret",
    "load_env",
    "variable",
]


def _default_cache_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "tuneship"


@dataclass(frozen=True)
class Settings:
    """Where tuneship keeps things and which tools it uses."""

    cache_dir: Path = field(default_factory=lambda: _default_cache_dir(os.environ))
    """Built toolchains and fixtures (``TUNESHIP_CACHE_DIR``; default ``~/.cache/tuneship``)."""

    toolchain_dir: Path | None = None
    """A llama.cpp toolchain tree to use instead of the cache (``TUNESHIP_TOOLCHAIN_DIR``):
    ``bin/`` with the binaries, ``src/`` with ``convert_hf_to_gguf.py`` and ``gguf-py``."""

    data_dir: Path = Path(".tuneship")
    """State and artifacts of embedded runs (``TUNESHIP_DATA_DIR``)."""

    search_path: str = ""
    """``PATH`` as it was at start, the last place binaries are looked for."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        return cls.from_loaded(load_env(env).values, env)

    @classmethod
    def from_loaded(cls, values: TuneshipEnv, env: Mapping[str, str]) -> Settings:
        """From settings already read; ``env`` gives ``HOME``/``XDG_CACHE_HOME``/``PATH``."""
        return cls(
            cache_dir=values.cache_dir or _default_cache_dir(env),
            toolchain_dir=values.toolchain_dir,
            data_dir=values.data_dir,
            search_path=env.get("PATH", ""),
        )
