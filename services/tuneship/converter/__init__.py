"""Export stage: HF model → GGUF → quantized GGUFs, verified in llama.cpp, with a report."""

from tuneship.common.gguf_meta import GgufInfo, read_gguf
from tuneship.converter.convert import ConvertResult, convert, lineage_metadata
from tuneship.converter.doctor import DoctorReport, Finding, check_gguf, check_hf, check_model
from tuneship.converter.evaluate import Quality, against_baseline, baseline
from tuneship.converter.export import ExportResult, evaluate, export
from tuneship.converter.quantize import QuantOutput, compute_imatrix, needs_imatrix, quantize
from tuneship.converter.repair import fix_hf
from tuneship.converter.report import ExportReport, QuantReport, recommend, write_report
from tuneship.converter.verify import VerifyResult, verify

__all__ = [
    "ConvertResult",
    "DoctorReport",
    "ExportReport",
    "ExportResult",
    "Finding",
    "GgufInfo",
    "Quality",
    "QuantOutput",
    "QuantReport",
    "VerifyResult",
    "against_baseline",
    "baseline",
    "check_gguf",
    "check_hf",
    "check_model",
    "compute_imatrix",
    "convert",
    "evaluate",
    "export",
    "fix_hf",
    "lineage_metadata",
    "needs_imatrix",
    "quantize",
    "read_gguf",
    "recommend",
    "verify",
    "write_report",
]
