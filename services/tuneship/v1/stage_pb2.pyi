from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArtifactRef(_message.Message):
    __slots__ = ("key", "sha256", "size")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    key: str
    sha256: str
    size: int
    def __init__(self, key: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class StageRequest(_message.Message):
    __slots__ = ("task_id", "pipeline", "spec_json", "inputs", "output_prefix", "attempt", "attach_only", "after_seq")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ArtifactRef
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ArtifactRef, _Mapping]] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ATTACH_ONLY_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    pipeline: str
    spec_json: str
    inputs: _containers.MessageMap[str, ArtifactRef]
    output_prefix: str
    attempt: int
    attach_only: bool
    after_seq: int
    def __init__(self, task_id: _Optional[str] = ..., pipeline: _Optional[str] = ..., spec_json: _Optional[str] = ..., inputs: _Optional[_Mapping[str, ArtifactRef]] = ..., output_prefix: _Optional[str] = ..., attempt: _Optional[int] = ..., attach_only: _Optional[bool] = ..., after_seq: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total", "unit", "eta_s", "message")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    ETA_S_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    step: int
    total: int
    unit: str
    eta_s: float
    message: str
    def __init__(self, step: _Optional[int] = ..., total: _Optional[int] = ..., unit: _Optional[str] = ..., eta_s: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("level", "message")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    level: str
    message: str
    def __init__(self, level: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("values", "step")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    step: int
    def __init__(self, values: _Optional[_Mapping[str, float]] = ..., step: _Optional[int] = ...) -> None: ...

class StageResult(_message.Message):
    __slots__ = ("outputs", "summary_json", "cached")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ArtifactRef
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ArtifactRef, _Mapping]] = ...) -> None: ...
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.MessageMap[str, ArtifactRef]
    summary_json: str
    cached: bool
    def __init__(self, outputs: _Optional[_Mapping[str, ArtifactRef]] = ..., summary_json: _Optional[str] = ..., cached: _Optional[bool] = ...) -> None: ...

class StageEvent(_message.Message):
    __slots__ = ("task_id", "stage", "seq", "time", "progress", "log", "metrics", "result")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    stage: str
    seq: int
    time: float
    progress: Progress
    log: LogLine
    metrics: Metrics
    result: StageResult
    def __init__(self, task_id: _Optional[str] = ..., stage: _Optional[str] = ..., seq: _Optional[int] = ..., time: _Optional[float] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., log: _Optional[_Union[LogLine, _Mapping]] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., result: _Optional[_Union[StageResult, _Mapping]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...
