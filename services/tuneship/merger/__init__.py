"""Merge stage: a trained adapter (or full model) into one consistent Hugging Face model."""

from tuneship.merger.manifest import TrainManifest, VocabDecision, read_manifest
from tuneship.merger.merge import MergeResult, merge
from tuneship.merger.vocab import VocabReport, reconcile_rows

__all__ = [
    "MergeResult",
    "TrainManifest",
    "VocabDecision",
    "VocabReport",
    "merge",
    "read_manifest",
    "reconcile_rows",
]
