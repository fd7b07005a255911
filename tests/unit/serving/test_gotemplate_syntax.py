"""The Ollama test server's Go template syntax check (its 400 on bad templates)."""

from __future__ import annotations

import pytest
from tuneship.common.chat_templates import family_template
from tuneship.serving.gotemplate import to_go_template
from tuneship.testing.gotemplate_syntax import check_go_template

pytestmark = pytest.mark.unit

BROKEN = [
    "{{ .Prompt ",
    "{{ if .System }}x",
    "{{ end }}",
    "{{ else }}",
    "{{ }}",
    "{{ if }}x{{ end }}",
    '{{ "unterminated }}',
    "{{/* open comment }}",
    "{{ range .Messages }}{{ .Content }}{{ end }}{{ end }}",
]
GOOD = [
    "{{ .Prompt }}",
    "{{- if .System }}{{ .System }}{{ end -}}",
    '{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}u{{ else if eq .Role "x" }}{{ end }}'
    "{{ end }}",
    '{{ "}}" }}{{/* a comment */}}',
    "plain text only",
]


@pytest.mark.parametrize("source", BROKEN)
def test_unparsable_templates_are_rejected(source: str) -> None:
    with pytest.raises(ValueError):
        check_go_template(source)


@pytest.mark.parametrize("source", GOOD)
def test_valid_templates_pass(source: str) -> None:
    check_go_template(source)


def test_every_generated_template_passes() -> None:
    for family in ("chatml", "llama2", "llama3", "gemma"):
        check_go_template(to_go_template(family_template(family), bos_token="<s>").text)
