"""Generated Go templates, rendered by Go's own text/template the way Ollama renders
them, give exactly the text the Jinja template renders (1 to 6 turns, with and without a
system prompt) — for both fixtures' templates and the common families."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tuneship.common.chat_templates import family_template
from tuneship.quickstart.tiny_models import data_text
from tuneship.serving.gotemplate import sample_conversations, to_go_template
from tuneship.serving.jinja_render import render_jinja
from tuneship.testing.gotemplate_syntax import check_go_template
from tuneship.testing.serving import build_go_renderer, go_render

pytestmark = pytest.mark.integration

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gotemplate"
# (name, Jinja source, bos text, eos text) as the GGUFs carry them.
TEMPLATES = [
    ("fixture tiny-chatml", data_text("chatml.jinja"), "", "<|im_end|>"),
    ("fixture tiny-llama2", data_text("llama2.jinja"), "<s>", "</s>"),
    ("chatml", family_template("chatml"), "", "<|im_end|>"),
    ("llama2", family_template("llama2"), "<s>", "</s>"),
    ("llama3", family_template("llama3"), "<|begin_of_text|>", "<|eot_id|>"),
    ("gemma", family_template("gemma"), "<bos>", "<eos>"),
    ("mistral", family_template("mistral"), "<s>", "</s>"),
]


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/tools/gotemplate built into a temp dir (fails where Go is missing)."""
    return build_go_renderer(TOOL, tmp_path_factory.mktemp("gotemplate"))


@pytest.mark.parametrize(("name", "jinja", "bos", "eos"), TEMPLATES, ids=[t[0] for t in TEMPLATES])
def test_go_rendering_equals_jinja_rendering(
    go_renderer: Path, tmp_path: Path, name: str, jinja: str, bos: str, eos: str
) -> None:
    go = to_go_template(jinja, bos_token=bos, eos_token=eos)
    cases = [
        (messages, generation)
        for messages, generation in sample_conversations(6)
        if messages[0]["role"] != "system" or go.shape.system_prefix is not None
    ]
    assert {len([m for m in c if m["role"] == "user"]) for c, _ in cases} == set(range(1, 7))
    assert any(c[0]["role"] == "system" for c, _ in cases) == (go.shape.system_prefix is not None)
    rendered = go_render(go_renderer, go.text, [messages for messages, _ in cases])
    for (messages, generation), text in zip(cases, rendered, strict=True):
        expected = render_jinja(
            jinja, messages, add_generation_prompt=generation, bos_token=bos, eos_token=eos
        )
        assert text == expected, f"{name}: {len(messages)} messages"


def test_go_and_the_test_server_reject_the_same_templates(
    go_renderer: Path, tmp_path: Path
) -> None:
    """The Ollama test server's 400 on a bad TEMPLATE matches what Go's parser refuses."""
    samples = [
        "{{ .Prompt ", "{{ if .System }}x", "{{ end }}", "{{ else }}", "{{ }}",
        "{{ if }}x{{ end }}", "{{/* open comment }}", "{{ .Prompt }}",
        '{{ range .Messages }}{{ if eq .Role "user" }}u{{ else }}a{{ end }}{{ end }}',
        '{{ "}}" }}{{/* comment */}}',
    ]  # fmt: skip
    for sample in samples:
        source = tmp_path / "t.gotmpl"
        source.write_text(sample)
        go_ok = (
            subprocess.run(
                [str(go_renderer), str(source)], input=b"[]", capture_output=True, timeout=60
            ).returncode
            == 0
        )
        try:
            check_go_template(sample)
            ours = True
        except ValueError:
            ours = False
        assert ours == go_ok, sample
