"""Quantization types by their llama.cpp names; imatrix-only types are refused without one."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from tuneship.common.errors import FailedPrecondition, InvalidInput
from tuneship.common.events import NullSink
from tuneship.common.spec import ExportSpec
from tuneship.common.toolchain import Toolchain
from tuneship.converter.quantize import check_types, needs_imatrix, quantize

pytestmark = pytest.mark.unit


def test_iq_types_need_an_importance_matrix_and_k_quants_do_not() -> None:
    assert all(needs_imatrix(t) for t in ("iq2_xs", "iq3_xxs", "iq4_xs", "IQ1_S", "q2_k_s"))
    assert not any(needs_imatrix(t) for t in ("q4_k_m", "q5_k_m", "q8_0", "q4_0", "q6_k"))


def test_unknown_type_is_invalid_and_lists_the_names() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_types(["q4_k_m", "q4_k_xl"], imatrix_policy="auto")
    assert "q4_k_xl" in caught.value.message and "q5_k_m" in (caught.value.hint or "")


def test_imatrix_never_refuses_iq_types_naming_the_field() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        check_types(["q4_k_m", "iq3_xxs"], imatrix_policy="never")
    assert "iq3_xxs" in caught.value.message and caught.value.where == "export.imatrix"


def test_quantize_refuses_iq_type_without_an_imatrix_before_running(tmp_path: Path) -> None:
    empty = Toolchain("0", "none", ())  # no binaries: the refusal must come first
    with pytest.raises(FailedPrecondition) as caught:
        quantize(tmp_path / "m.gguf", tmp_path, ["iq4_xs"], toolchain=empty, events=NullSink())
    assert "importance matrix" in caught.value.message and "--imatrix" in (caught.value.hint or "")


def test_spec_accepts_llama_cpp_names_in_any_case_and_rejects_others() -> None:
    assert ExportSpec(quant_types=["Q4_K_M", "q8_0", "q4_k_m"]).quant_types == ["q4_k_m", "q8_0"]
    with pytest.raises(ValidationError, match="q9_k"):
        ExportSpec(quant_types=["q9_k"])


def test_export_refuses_to_quantize_from_a_q8_0_baseline(tmp_path: Path) -> None:
    from tuneship.common.spec import parse_spec
    from tuneship.converter import export

    spec = parse_spec(
        "apiVersion: tuneship/v1\nmetadata: {name: m}\nmodel: {base: b}\ndataset: {train: t}\n"
        "export: {outtype: q8_0, quant_types: [q4_k_m]}\n"
    )
    with pytest.raises(InvalidInput) as caught:
        export(spec, tmp_path, tmp_path / "out", NullSink(), Toolchain("0", "none", ()))
    assert caught.value.where == "export.outtype"
