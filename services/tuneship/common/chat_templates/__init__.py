"""Chat templates for named model families, for base models that ship without one.

Each family is one Jinja file in this package, and the files are the list of families:
adding ``<name>.jinja`` adds the family ``<name>`` everywhere it is accepted (the spec,
``tuneship validate``, training). Each renders what its family's official template
renders; docs/training.md names the model and file each one follows and the few places
where it differs, and why. Like the models' own templates, they refuse roles the family
has no place for (``raise_exception``) instead of silently dropping them. They carry no
``{% generation %}`` tags: tuneship derives the trained spans by rendering, which needs
every turn to render the same whatever follows it.
"""

from __future__ import annotations

from importlib import resources

from tuneship.common.errors import InvalidInput

_SUFFIX = ".jinja"


def _listed_families() -> tuple[str, ...]:
    package = resources.files(__name__)
    names = (entry.name for entry in package.iterdir() if entry.name.endswith(_SUFFIX))
    return tuple(sorted(name.removesuffix(_SUFFIX) for name in names))


FAMILIES: tuple[str, ...] = _listed_families()


def family_name(name: str) -> str:
    """The bundled family ``name`` means (case and surrounding spaces are ignored).

    Raises ``InvalidInput`` at ``template.family`` listing the known families.
    """
    key = name.strip().lower()
    if key not in FAMILIES:
        raise InvalidInput(
            f"unknown chat template family {name!r}",
            where="template.family",
            hint=f"use one of: {', '.join(FAMILIES)}; or give a Jinja file in template.path",
        )
    return key


def family_template(name: str) -> str:
    """The Jinja chat template of a named family (``InvalidInput`` on an unknown name)."""
    key = family_name(name)
    return resources.files(__name__).joinpath(f"{key}{_SUFFIX}").read_text(encoding="utf-8")
