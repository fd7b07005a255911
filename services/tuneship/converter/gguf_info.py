"""GGUF headers are read by ``tuneship.common.gguf_meta``; these names stay importable
from here for the converter modules that still import them from this module."""

from tuneship.common.gguf_meta import GgufInfo, read_gguf

__all__ = ["GgufInfo", "read_gguf"]
