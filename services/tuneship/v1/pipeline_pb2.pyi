from tuneship.v1 import stage_pb2 as _stage_pb2
from tuneship.v1 import workers_pb2 as _workers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PENDING: _ClassVar[Phase]
    RUNNING: _ClassVar[Phase]
    SUCCEEDED: _ClassVar[Phase]
    FAILED: _ClassVar[Phase]
    CANCELLED: _ClassVar[Phase]
PHASE_UNSPECIFIED: Phase
PENDING: Phase
RUNNING: Phase
SUCCEEDED: Phase
FAILED: Phase
CANCELLED: Phase

class StageStatus(_message.Message):
    __slots__ = ("stage", "phase", "task_id", "attempts", "error", "started", "finished", "outputs", "summary_json", "waiting")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _stage_pb2.ArtifactRef
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_stage_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    stage: str
    phase: Phase
    task_id: str
    attempts: int
    error: str
    started: float
    finished: float
    outputs: _containers.MessageMap[str, _stage_pb2.ArtifactRef]
    summary_json: str
    waiting: str
    def __init__(self, stage: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., task_id: _Optional[str] = ..., attempts: _Optional[int] = ..., error: _Optional[str] = ..., started: _Optional[float] = ..., finished: _Optional[float] = ..., outputs: _Optional[_Mapping[str, _stage_pb2.ArtifactRef]] = ..., summary_json: _Optional[str] = ..., waiting: _Optional[str] = ...) -> None: ...

class Pipeline(_message.Message):
    __slots__ = ("id", "name", "phase", "spec_json", "stages", "priority", "created", "updated", "error", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    phase: Phase
    spec_json: str
    stages: _containers.RepeatedCompositeFieldContainer[StageStatus]
    priority: int
    created: float
    updated: float
    error: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., spec_json: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageStatus, _Mapping]]] = ..., priority: _Optional[int] = ..., created: _Optional[float] = ..., updated: _Optional[float] = ..., error: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("spec_yaml", "priority")
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    spec_yaml: str
    priority: int
    def __init__(self, spec_yaml: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class SubmitBatchRequest(_message.Message):
    __slots__ = ("pipelines",)
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    pipelines: _containers.RepeatedCompositeFieldContainer[SubmitRequest]
    def __init__(self, pipelines: _Optional[_Iterable[_Union[SubmitRequest, _Mapping]]] = ...) -> None: ...

class SubmitBatchResponse(_message.Message):
    __slots__ = ("pipelines",)
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    pipelines: _containers.RepeatedCompositeFieldContainer[Pipeline]
    def __init__(self, pipelines: _Optional[_Iterable[_Union[Pipeline, _Mapping]]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("phase", "name_prefix", "labels", "page_size", "page_token")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    phase: Phase
    name_prefix: str
    labels: _containers.ScalarMap[str, str]
    page_size: int
    page_token: str
    def __init__(self, phase: _Optional[_Union[Phase, str]] = ..., name_prefix: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("pipelines", "next_page_token")
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    pipelines: _containers.RepeatedCompositeFieldContainer[Pipeline]
    next_page_token: str
    def __init__(self, pipelines: _Optional[_Iterable[_Union[Pipeline, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("id", "after_seq")
    ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    id: str
    after_seq: int
    def __init__(self, id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class PipelineEvent(_message.Message):
    __slots__ = ("pipeline_id", "seq", "phase", "stage_event", "message")
    PIPELINE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STAGE_EVENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    pipeline_id: str
    seq: int
    phase: Phase
    stage_event: _stage_pb2.StageEvent
    message: str
    def __init__(self, pipeline_id: _Optional[str] = ..., seq: _Optional[int] = ..., phase: _Optional[_Union[Phase, str]] = ..., stage_event: _Optional[_Union[_stage_pb2.StageEvent, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class CancelPipelineRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RetryRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("id", "purge_artifacts")
    ID_FIELD_NUMBER: _ClassVar[int]
    PURGE_ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    purge_artifacts: bool
    def __init__(self, id: _Optional[str] = ..., purge_artifacts: _Optional[bool] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PipelineChatRequest(_message.Message):
    __slots__ = ("id", "messages", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    messages: _containers.RepeatedCompositeFieldContainer[_workers_pb2.ChatMessage]
    options: _containers.ScalarMap[str, float]
    def __init__(self, id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_workers_pb2.ChatMessage, _Mapping]]] = ..., options: _Optional[_Mapping[str, float]] = ...) -> None: ...

class InputFile(_message.Message):
    __slots__ = ("name", "size", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class InputHeader(_message.Message):
    __slots__ = ("kind", "field", "name", "files")
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    field: str
    name: str
    files: _containers.RepeatedCompositeFieldContainer[InputFile]
    def __init__(self, kind: _Optional[str] = ..., field: _Optional[str] = ..., name: _Optional[str] = ..., files: _Optional[_Iterable[_Union[InputFile, _Mapping]]] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "path", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: InputHeader
    path: str
    data: bytes
    def __init__(self, header: _Optional[_Union[InputHeader, _Mapping]] = ..., path: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadInputResponse(_message.Message):
    __slots__ = ("location", "manifest", "already_stored", "max_upload_bytes")
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STORED_FIELD_NUMBER: _ClassVar[int]
    MAX_UPLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    location: str
    manifest: _stage_pb2.ArtifactRef
    already_stored: bool
    max_upload_bytes: int
    def __init__(self, location: _Optional[str] = ..., manifest: _Optional[_Union[_stage_pb2.ArtifactRef, _Mapping]] = ..., already_stored: _Optional[bool] = ..., max_upload_bytes: _Optional[int] = ...) -> None: ...

class ArtifactFile(_message.Message):
    __slots__ = ("stage", "output", "path", "size", "sha256")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    stage: str
    output: str
    path: str
    size: int
    sha256: str
    def __init__(self, stage: _Optional[str] = ..., output: _Optional[str] = ..., path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ListArtifactsRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[ArtifactFile]
    def __init__(self, files: _Optional[_Iterable[_Union[ArtifactFile, _Mapping]]] = ...) -> None: ...

class ReadArtifactRequest(_message.Message):
    __slots__ = ("id", "stage", "output", "path", "offset")
    ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    id: str
    stage: str
    output: str
    path: str
    offset: int
    def __init__(self, id: _Optional[str] = ..., stage: _Optional[str] = ..., output: _Optional[str] = ..., path: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("file", "data")
    FILE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    file: ArtifactFile
    data: bytes
    def __init__(self, file: _Optional[_Union[ArtifactFile, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...
