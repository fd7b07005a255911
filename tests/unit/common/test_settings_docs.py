"""The settings reference in docs/services.md is the model's: a new or changed setting
fails here until the table is regenerated."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuneship.common.settings.report import reference_table

pytestmark = pytest.mark.unit
DOC = Path(__file__).resolve().parents[3] / "docs" / "services.md"


def test_the_settings_reference_is_the_models() -> None:
    text = DOC.read_text()
    table = text.split("<!-- settings-reference:start -->\n", 1)[1]
    table = table.split("<!-- settings-reference:end -->", 1)[0]
    assert table == reference_table(), (
        "docs/services.md's settings reference differs from TuneshipEnv; paste the output "
        "of: python -c 'from tuneship.common.settings.report import reference_table; "
        'print(reference_table(), end="")\''
    )
