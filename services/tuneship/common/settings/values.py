"""How one environment variable's text becomes a typed value, strictly.

Each parser takes the text (or an already typed value, from code) and returns the
value, or raises ``ValueError`` with a message that says what it got and what is
accepted; the loader adds the variable's name. Nothing here guesses: ``ture`` is not
a boolean and ``10m`` is not a number of seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_settings import NoDecode

from tuneship.common.stages import STAGES

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean: use true/false/1/0")


def _whole(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a whole number")
        if isinstance(value, int):
            number = value
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                raise ValueError(f"{value!r} is not a whole number") from None
        if number < minimum:
            raise ValueError(f"{value!r} is too small: use a whole number >= {minimum}")
        return number

    return parse


def _decimal(what: str, minimum: float, *, above: bool = False) -> Callable[[Any], float]:
    bound = f"> {minimum:g}" if above else f">= {minimum:g}"

    def parse(value: Any) -> float:
        try:
            number = float(value if isinstance(value, int | float) else str(value).strip())
        except ValueError:
            raise ValueError(f"{value!r} is not {what} (e.g. 60 or 1.5)") from None
        if not math.isfinite(number) or number < minimum or (above and number == minimum):
            raise ValueError(f"{value!r} is out of range: use {what} {bound}")
        return number

    return parse


def choice(*options: str) -> Callable[[Any], str]:
    """A parser accepting exactly one of ``options`` (case-insensitive)."""

    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"{value!r} is not one of: {', '.join(options)}")
        return text

    return parse


def _pairs(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = []
        for item in filter(None, (p.strip() for p in str(value).split(","))):
            key, sep, got = item.partition("=")
            if not sep or not key.strip() or not got.strip():
                raise ValueError(f"{item!r} is not stage=value (e.g. train=4,merge=2)")
            items.append((key.strip(), got.strip()))
    found: dict[str, str] = {}
    for key, got in items:
        if key not in STAGES:
            raise ValueError(f"{key!r} is not a stage: use {', '.join(STAGES)}")
        if key in found:
            raise ValueError(f"{key!r} is named twice")
        found[key] = str(got)
    return found


def _counts(value: Any) -> dict[str, int]:
    at_least_one = _whole(1)
    found = {}
    for key, got in _pairs(value).items():
        try:
            found[key] = at_least_one(got)
        except ValueError as exc:
            raise ValueError(f"{key}={got!r}: {exc}") from None
    return found


def _port(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    port = _whole(1)(value)
    if port > 65535:
        raise ValueError(f"{value!r} is not a port: use 1-65535, or empty for none")
    return port


@dataclass(frozen=True)
class Accepts:
    """What a variable of this type accepts, as the settings reference says it."""

    text: str


Boolean = Annotated[bool, BeforeValidator(_boolean), Accepts("true/false, 1/0, yes/no, on/off")]
Count = Annotated[int, BeforeValidator(_whole(1)), Accepts("whole number >= 1")]
Tries = Annotated[int, BeforeValidator(_whole(0)), Accepts("whole number >= 0")]
PartSize = Annotated[int, BeforeValidator(_whole(5)), Accepts("whole number >= 5")]
Seconds = Annotated[
    float, BeforeValidator(_decimal("a number of seconds", 0.0)), Accepts("seconds >= 0")
]
GiB = Annotated[float, BeforeValidator(_decimal("a number of GiB", 0.0, above=True)),
                Accepts("GiB > 0")]  # fmt: skip
Port = Annotated[int | None, BeforeValidator(_port), Accepts("port 1-65535; empty: none")]
StagePairs = Annotated[
    dict[str, str], NoDecode, BeforeValidator(_pairs), Accepts("`stage=value,...`")
]
StageCounts = Annotated[
    dict[str, int], NoDecode, BeforeValidator(_counts), Accepts("`stage=N,...`, N >= 1")
]
