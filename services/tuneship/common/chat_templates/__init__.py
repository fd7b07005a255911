"""Chat templates for named model families, for base models that ship without one.

Each family is one Jinja file in this package, written from the family's documented
prompt format. Like the models' own templates, they refuse roles the family has no
place for (``raise_exception``) instead of silently dropping them. They carry no
``{% generation %}`` tags: tuneship derives the trained spans by rendering.
"""

from __future__ import annotations

from importlib import resources

from tuneship.common.errors import InvalidInput

FAMILIES: tuple[str, ...] = ("chatml", "gemma", "llama2", "llama3", "mistral", "phi3", "zephyr")


def family_template(name: str) -> str:
    """The Jinja chat template of a named family (``InvalidInput`` on an unknown name)."""
    key = name.strip().lower()
    if key not in FAMILIES:
        raise InvalidInput(
            f"unknown chat template family {name!r}",
            where="template.family",
            hint=f"use one of: {', '.join(FAMILIES)}; or give a Jinja file in template.path",
        )
    package = resources.files("tuneship.common.chat_templates")
    return package.joinpath(f"{key}.jinja").read_text(encoding="utf-8")
