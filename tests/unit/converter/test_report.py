"""The recommendation is the smallest type within the quality budget; the report is readable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.converter.report import ExportReport, QuantReport, recommend, write_report

pytestmark = pytest.mark.unit


def row(name: str, size: int, kld: float, baseline: bool = False) -> QuantReport:
    return QuantReport(name, f"m-{name}.gguf", size, 4.5, 10.0 + kld, kld, 95.0, 900.0, 80.0,
                       True, baseline)  # fmt: skip


ROWS = [row("f16", 1000, 0.0, True), row("q8_0", 530, 0.001), row("q4_k_m", 300, 0.04),
        row("q2_k", 200, 0.5)]  # fmt: skip


def test_recommends_the_smallest_type_within_the_budget() -> None:
    assert recommend(ROWS, 0.1)[0] == "q4_k_m"
    assert recommend(ROWS, 0.01)[0] == "q8_0"
    assert recommend(ROWS, 1.0)[0] == "q2_k"


def test_no_recommendation_when_nothing_fits_and_never_the_baseline() -> None:
    choice, reason = recommend(ROWS, 0.0001)
    assert choice is None and "no quantized type" in reason


def test_report_files_hold_the_table_the_choice_and_a_png(tmp_path: Path) -> None:
    choice, reason = recommend(ROWS, 0.1)
    report = ExportReport("pirate", 0.1, 900, 224, ROWS, choice, reason)
    paths = write_report(report, tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md", "report.png"]
    data = json.loads(paths[0].read_text())
    assert data["recommended"] == "q4_k_m" and len(data["rows"]) == 4
    text = paths[1].read_text()
    assert "| **q4_k_m** ★ |" in text and "Recommended: q4_k_m" in text and "report.png" in text
    assert paths[2].read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob(".*partial"))
