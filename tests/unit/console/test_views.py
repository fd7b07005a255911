"""What the console's pages work out from the controller's answers."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from tuneship.client import ArtifactInfo, PipelineInfo, StageInfo, WatchEvent
from tuneship.common.errors import InvalidInput
from tuneship.common.units import human_size
from tuneship.console import views
from tuneship.console.charts import loss_chart, quality_chart, timeline_chart
from tuneship.console.files import RangeNotSatisfiable, attachment, byte_range

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def pipeline(pid: str, name: str, **labels: str) -> PipelineInfo:
    return PipelineInfo(pid, name, "running", "", 0.0, 0.0, [], dict(labels))


def test_labels_parse_and_a_part_without_equals_is_refused() -> None:
    assert views.parse_labels(" batch=b1, team = nlp ,") == {"batch": "b1", "team": "nlp"}
    assert views.parse_labels("") == {}
    with pytest.raises(InvalidInput, match="is not key=value"):
        views.parse_labels("batch")


def test_batches_group_in_order_of_appearance_with_the_unbatched_last() -> None:
    items = [pipeline("1", "a", batch="y"), pipeline("2", "b"), pipeline("3", "c", batch="x"),
             pipeline("4", "d", batch="y")]  # fmt: skip
    groups = views.by_batch(items)
    assert [(g.label, [p.id for p in g.pipelines]) for g in groups] == [
        ("y", ["1", "4"]), ("x", ["3"]), ("", ["2"])]  # fmt: skip
    assert groups[0].counts() == {"running": 2}


def test_search_finds_any_part_of_the_name_or_id_in_any_case() -> None:
    info = pipeline("lr-sweep-3-1a2b", "LR sweep 3")
    assert views.matches(info, "sweep 3") and views.matches(info, "1A2B")
    assert views.matches(info, "  ") and not views.matches(info, "dpo")


def test_problems_land_on_the_lines_they_name() -> None:
    text = "apiVersion: tuneship/v1\nmetadata: {name: x}\nmodel:\n  bse: s3://m\n"
    check = views.check_spec(text)
    assert not check.ok
    by_line = {line.number: line.problems for line in check.lines if line.problems}
    assert "model.bse: unknown field; did you mean 'base'?" in by_line[4]
    assert any("dataset: required field is missing" in p for p in by_line[1])
    yaml_error = views.check_spec("apiVersion: tuneship/v1\nmetadata: [\n")
    shown = yaml_error.general + [p for line in yaml_error.lines for p in line.problems]
    assert not yaml_error.ok and any(p.startswith("not valid YAML") for p in shown)
    empty = views.check_spec("")
    assert empty.general and "empty" in empty.general[0]


def test_the_controllers_spec_error_text_is_read_back_into_lines() -> None:
    message = ("2 problem(s) in spec:\n  spec:3: model.base: required field is missing\n"
               "  spec:7: train.lr: unknown field")  # fmt: skip
    assert views.controller_problems(message) == [
        ("spec:3: model.base", "required field is missing"),
        ("spec:7: train.lr", "unknown field"),
    ]
    assert views.controller_problems("not reachable") == []


def test_quality_rows_mark_the_recommended_type() -> None:
    report = [
        {"quant_type": "f16", "size_bytes": 2e6, "baseline": True, "verified": True},
        {"quant_type": "q8_0", "size_bytes": 1e6, "kld_mean": 0.01, "verified": True},
    ]
    export = StageInfo("export", "succeeded", 1, "", {}, {"recommended": "q8_0",
                       "report": json.dumps(report)})  # fmt: skip
    info = PipelineInfo("p", "p", "succeeded", "", 0, 0, [export])
    rows, recommended = views.quality_report(info)
    assert recommended == "q8_0"
    assert [(r.quant_type, r.recommended, r.baseline) for r in rows] == [
        ("f16", False, True), ("q8_0", True, False)]  # fmt: skip
    assert views.quality_report(PipelineInfo("p", "p", "running", "", 0, 0, [])) == ([], "")


def test_the_eval_loss_after_training_comes_from_the_train_summary() -> None:
    train = StageInfo("train", "succeeded", 1, "", {}, {"final_loss": 2.0, "eval_loss": 2.03})
    assert views.held_out_loss(PipelineInfo("p", "p", "running", "", 0, 0, [train])) == 2.03
    no_eval = StageInfo("train", "succeeded", 1, "", {}, {"final_loss": 2.0})
    assert views.held_out_loss(PipelineInfo("p", "p", "running", "", 0, 0, [no_eval])) is None
    assert views.held_out_loss(PipelineInfo("p", "p", "pending", "", 0, 0, [])) is None


def test_loss_points_follow_the_steps_and_the_chart_is_valid_svg() -> None:
    events = [
        WatchEvent(1, "running", "train", "metrics", "", {"loss": 2.0}, 1),
        WatchEvent(2, "running", "train", "metrics", "", {"loss": 1.0, "eval_loss": 1.5}, 2),
        WatchEvent(3, "running", "merge", "metrics", "", {"loss": 9.0}, 1),
        WatchEvent(4, "running", "train", "metrics", "", {"loss": 0.5}, None),
    ]
    curves = views.loss_points(events)
    assert curves == {"loss": [(1, 2.0), (2, 1.0), (3, 0.5)], "eval_loss": [(2, 1.5)]}
    svg = ET.fromstring(str(loss_chart(curves, title="Loss of <x>")))
    namespace = "{http://www.w3.org/2000/svg}"
    assert svg.find(f"{namespace}title").text == "Loss of <x>"
    assert len(svg.findall(f"{namespace}polyline")) == 2
    assert "last 0.5 at step 3" in svg.find(f"{namespace}desc").text
    assert str(loss_chart({"loss": []})) == ""


def test_the_quality_chart_labels_every_type_and_names_the_recommended_one() -> None:
    row = views.QualityRow
    rows = [row("f16", 2.0, 16, 3.1, 0.0, 100.0, 90, True, True, False),
            row("q8_0", 1.1, 8.5, 3.11, 0.002, 99.0, 150, True, False, True),
            row("q4_k_m", 0.7, 4.9, 3.4, 0.09, 93.0, 210, True, False, False)]  # fmt: skip
    svg = ET.fromstring(str(quality_chart(rows)))
    namespace = "{http://www.w3.org/2000/svg}"
    labels = [t.text for t in svg.iter(f"{namespace}text")]
    assert "q8_0 (recommended)" in labels and "q4_k_m" in labels
    assert "f16" not in labels  # the baseline is the reference, not a point
    assert "q8_0: 1.1 MB, KLD 0.0020 (recommended)" in svg.find(f"{namespace}desc").text
    assert str(quality_chart(rows[:1])) == ""


def test_small_klds_are_ticked_in_short_numbers_with_the_power_of_ten_in_the_title() -> None:
    row = views.QualityRow  # a real quickstart's q8_0 and q4_k_m
    rows = [row("q8_0", 1.6, 8.5, 115.3, 0.0000086, 99.8, 2346, True, False, False),
            row("q4_k_m", 0.9, 5.1, 115.0, 0.000358, 98.1, 2720, True, False, True)]  # fmt: skip
    svg = ET.fromstring(str(quality_chart(rows)))
    texts = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "mean KLD (\N{MULTIPLICATION SIGN}10\N{SUPERSCRIPT MINUS}\N{SUPERSCRIPT FOUR})" in texts
    ticks = texts[texts.index("size (MB)") + 2 :][:5]  # after the axis titles: the KLD ticks
    assert ticks == ["0", "1.03", "2.06", "3.09", "4.12"]  # fit left of the axis


def test_the_timeline_has_a_bar_per_started_stage_and_says_how_long() -> None:
    stages = [StageInfo("train", "succeeded", 1, "", {}, {}, 100.0, 110.0),
              StageInfo("merge", "running", 1, "", {}, {}, 110.0, 0.0),
              StageInfo("export", "pending", 0, "", {}, {})]  # fmt: skip
    svg = ET.fromstring(str(timeline_chart(stages, now=112.5)))
    namespace = "{http://www.w3.org/2000/svg}"
    assert len(svg.findall(f"{namespace}rect")) == 2
    texts = [t.text for t in svg.iter(f"{namespace}text")]
    assert "train (succeeded)" in texts and "merge (running)" in texts
    assert "10.0 s" in texts and "2.5 s" in texts and "12.5 s" in texts
    assert str(timeline_chart(stages[2:], now=0)) == ""


def test_a_download_keeps_its_name_and_cannot_break_out_of_the_header() -> None:
    assert attachment("stages/x/pirate-q8_0.gguf") == (
        "attachment; filename=\"pirate-q8_0.gguf\"; filename*=UTF-8''pirate-q8_0.gguf"
    )
    hostile = attachment('a";\r\nSet-Cookie: x=1 é.md')
    assert "\r" not in hostile and "\n" not in hostile and hostile.count('"') == 2
    assert "filename*=UTF-8''a%22%3B%0D%0ASet-Cookie%3A%20x%3D1%20%C3%A9.md" in hostile


def test_file_links_quote_each_part_of_the_path() -> None:
    found = ArtifactInfo("train", "train", "runs/events out#1?.bin", 3, "0" * 64)
    url = views.file_url("p-1", found)
    assert url == "/pipelines/p-1/files/train/train/runs/events%20out%231%3F.bin"
    assert found.name == "train/runs/events out#1?.bin"
    assert ArtifactInfo("train", "best", "a.bin", 1, "").name == "train/best/a.bin"


def test_sizes_read_as_people_read_them() -> None:
    assert [human_size(n) for n in (0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**30)] == [
        "0 bytes", "1023 bytes", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 GiB",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("header", "if_range", "expected"),
    [
        ("", "", None),  # no Range: the whole file
        ("bytes=100-", "", (100, 999)),  # a browser resuming
        ("bytes=100-199", "", (100, 199)),
        ("bytes=900-5000", "", (900, 999)),  # the end is clamped to the file
        ("bytes=-300", "", (700, 999)),  # the last 300 bytes
        ("bytes=-5000", "", (0, 999)),
        ("bytes=100-", '"abc"', (100, 999)),  # If-Range is this file's ETag
        ("bytes=100-", '"other"', None),  # the file changed: send it whole
        ("bytes=0-1,5-9", "", None),  # several ranges: ignored
        ("items=1-2", "", None),  # another unit: ignored
        ("bytes=200-100", "", None),  # last before first: ignored
        ("bytes=-", "", None),
    ],
)
def test_a_range_asks_for_the_part_a_browser_misses(
    header: str, if_range: str, expected: tuple[int, int] | None
) -> None:
    assert byte_range(header, if_range, 1000, '"abc"') == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_a_range_past_the_end_cannot_be_satisfied(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, "", 1000, '"abc"')
