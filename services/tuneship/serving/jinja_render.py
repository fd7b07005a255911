"""Rendering a Hugging Face chat template (Jinja) the way ``apply_chat_template`` does.

Same environment as transformers: a sandbox with ``trim_blocks``/``lstrip_blocks``,
``raise_exception`` and ``strftime_now``; ``bos_token``/``eos_token`` given as text.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tuneship.common.errors import InvalidInput


class TemplateRaised(Exception):
    """The template itself refused the conversation (``raise_exception``)."""


def _raise(message: str) -> None:
    raise TemplateRaised(message)


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise InvalidInput(
            f"the chat template is not valid Jinja: {exc}",
            where="tokenizer.chat_template",
            hint="fix the template in the model's tokenizer_config.json and re-export",
        ) from exc


def render_jinja(
    source: str,
    messages: list[dict[str, str]],
    *,
    add_generation_prompt: bool,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The text ``source`` renders for ``messages``; ``TemplateRaised`` if it refuses them."""
    return str(
        _compile(source).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    )
