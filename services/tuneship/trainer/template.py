"""Which chat template a run formats with: the base model's, a named family or a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.common.chat import has_training_tags
from tuneship.common.chat_templates import FAMILIES, family_template
from tuneship.common.errors import FailedPrecondition, InvalidInput
from tuneship.common.spec import TemplateSpec


@dataclass(frozen=True)
class ChosenTemplate:
    """The Jinja text and where it came from (``base``, ``family:<name>``, ``file:<path>``)."""

    text: str
    source: str

    @property
    def has_generation_tags(self) -> bool:
        return has_training_tags(self.text)


def choose_template(spec: TemplateSpec, tokenizer: Any) -> ChosenTemplate:
    """The template to use; installs it on ``tokenizer`` so it is saved with it.

    The spec wins over the base model's own template. A base model without a template
    and a spec without one is refused: guessing a format would train the wrong tokens.
    """
    if spec.family and spec.path:
        raise InvalidInput(
            "give either template.family or template.path, not both", where="template"
        )
    if spec.family:
        chosen = ChosenTemplate(family_template(spec.family), f"family:{spec.family}")
    elif spec.path:
        path = Path(spec.path)
        if not path.is_file():
            raise InvalidInput(f"template file not found: {path}", where="template.path")
        chosen = ChosenTemplate(path.read_text(encoding="utf-8"), f"file:{path}")
    elif isinstance(getattr(tokenizer, "chat_template", None), str):
        chosen = ChosenTemplate(tokenizer.chat_template, "base")
    else:
        raise FailedPrecondition(
            "the base model has no chat template",
            where="template",
            hint=f"set template.family ({', '.join(FAMILIES)}) or template.path to a Jinja file",
        )
    tokenizer.chat_template = chosen.text
    return chosen
