"""Validation of the custom resources the fake serves against their published schemas.

JobSet (``jobset.x-k8s.io/v1alpha2``), TrainJob and ClusterTrainingRuntime
(``trainer.kubeflow.org/v1alpha1``) are checked with the models that Kubeflow generates
from its published OpenAPI spec (the PyPI package ``kubeflow-trainer-api``, which holds
JobSet's types too, as the Trainer's API embeds them), down to the embedded Job and
pod templates: types, required fields and unknown fields. A real API server prunes
unknown fields of a custom resource (with a warning); here they are refused, so that
a misspelt field fails a test instead of vanishing. CEL rules of the CRDs
(``x-kubernetes-validations``) are not checked.
"""

from __future__ import annotations

from typing import Any

Causes = list[tuple[str, str]]

MODELS = {
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): "JobsetV1alpha2JobSet",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "TrainerV1alpha1TrainJob",
    ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"): (
        "TrainerV1alpha1ClusterTrainingRuntime"
    ),
}


def schema_causes(obj: dict[str, Any]) -> Causes:
    """Every problem of ``obj`` (its ``status`` aside) against its kind's schema, as
    ``(field path, message)``; [] when it conforms or its kind has no schema here."""
    name = MODELS.get((str(obj.get("apiVersion")), str(obj.get("kind"))))
    if name is None:
        return []
    from kubeflow_trainer_api import models
    from pydantic import ValidationError

    body = {key: value for key, value in obj.items() if key != "status"}
    try:
        parsed = getattr(models, name).from_dict(body)
    except ValidationError as error:
        return [
            (".".join(str(part) for part in problem["loc"]), f"Invalid value: {problem['msg']}")
            for problem in error.errors()
        ]
    return [
        (path, "field not declared in schema")
        for path in unknown_fields(body, parsed.to_dict() if parsed else {}, "")
    ]


def unknown_fields(given: Any, kept: Any, path: str) -> list[str]:
    """Paths in ``given`` that the model dropped (the generated models ignore fields
    they do not declare, so what a round trip loses is what the schema lacks)."""
    found: list[str] = []
    if isinstance(given, dict) and isinstance(kept, dict):
        for key, value in given.items():
            where = f"{path}.{key}" if path else str(key)
            if value is None:
                continue
            if key not in kept:
                found.append(where)
            else:
                found += unknown_fields(value, kept[key], where)
    elif isinstance(given, list) and isinstance(kept, list):
        for index, (item, twin) in enumerate(zip(given, kept, strict=False)):
            found += unknown_fields(item, twin, f"{path}[{index}]")
    return found
