"""Every ``TUNESHIP_*`` variable, once: its type, default, meaning and who reads it.

``TuneshipEnv`` is the typed view of a process's environment. It is built once, at the
entry point (``load_env``), and what the services need is derived from it
(``Settings``, ``StoreSettings``, the controller's settings). The settings reference
in docs/services.md is generated from these fields (a test compares them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tuneship.common.settings.values import (
    Accepts,
    Boolean,
    Count,
    GiB,
    PartSize,
    Port,
    Seconds,
    StageCounts,
    StagePairs,
    Tries,
    choice,
)
from tuneship.common.stages import COMPONENTS

PREFIX = "TUNESHIP_"
SERVICES = ("controller", *COMPONENTS)
"""What ``tuneship serve`` starts."""
EVERY = (*SERVICES, "run", "cli")
"""Services, the embedded ``tuneship run`` and the other commands."""
WORKERS = COMPONENTS
CONTROLLER = ("controller", "run")

LogFormat = Annotated[
    Literal["text", "json"], BeforeValidator(choice("text", "json")), Accepts("`text`, `json`")
]
LogLevel = Annotated[
    Literal["debug", "info", "warning", "error"],
    BeforeValidator(choice("debug", "info", "warning", "error")),
    Accepts("`debug`, `info`, `warning`, `error`"),
]
MultiNodeKind = Annotated[
    Literal["jobset", "trainjob"],
    BeforeValidator(choice("jobset", "trainjob")),
    Accepts("`jobset`, `trainjob`"),
]
ServingBackendKind = Annotated[
    Literal["ollama", "llama-server"],
    BeforeValidator(choice("ollama", "llama-server")),
    Accepts("`ollama`, `llama-server`"),
]


def setting(default: Any, doc: str, used_by: tuple[str, ...], **extra: Any) -> Any:
    """A field: ``doc`` is its line in the reference; ``used_by`` the processes reading it.

    ``env``: its variable when not ``TUNESHIP_<NAME>``; ``shown_default``: the default
    as the reference states it (when it is computed); ``keep_empty``: an empty value
    means something (else empty is unset)."""
    return Field(default, description=doc, json_schema_extra={"used_by": list(used_by), **extra})


class TuneshipEnv(BaseSettings):
    """The environment of a tuneship process, typed. Secrets are ``SecretStr`` (masked
    in reprs and ``--print-config``) and may also come from ``<NAME>_FILE``."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", enable_decoding=False)

    # --- every process ------------------------------------------------------------
    cache_dir: Path | None = setting(
        None, "built toolchains and fixtures", EVERY,
        shown_default="`$XDG_CACHE_HOME/tuneship` or `~/.cache/tuneship`",
    )  # fmt: skip
    toolchain_dir: Path | None = setting(
        None, "a llama.cpp toolchain tree (`bin/`, `src/`) used before the cache", EVERY
    )
    data_dir: Path = setting(
        Path(".tuneship"), "state and artifacts of embedded runs; the controller's SQLite "
        "when `TUNESHIP_STATE_URL` is unset", EVERY,
    )  # fmt: skip
    log_format: LogFormat = setting("text", "log lines as text, or one JSON object each", EVERY)
    log_level: LogLevel | None = setting(
        None, "the least severe log level written", EVERY,
        shown_default="`info` (`tuneship serve`), `warning` (other commands)",
    )  # fmt: skip

    # --- the artifact store (docs/store.md) ------------------------------------------
    store: str | None = setting(
        None, "`local:/dir` or `s3://bucket[/prefix]`", EVERY,
        shown_default="`local:<data dir>/store`",
    )  # fmt: skip
    s3_endpoint: str = setting("", "`host:port` of the S3 server", EVERY)
    s3_access_key: SecretStr = setting(SecretStr(""), "S3 access key", EVERY)
    s3_secret_key: SecretStr = setting(SecretStr(""), "S3 secret key", EVERY)
    s3_secure: Boolean = setting(True, "reach S3 over TLS", EVERY)
    s3_region: str | None = setting(None, "S3 region, when the server insists on one", EVERY)
    s3_part_size_mib: PartSize = setting(16, "multipart part size in MiB", EVERY)
    s3_parallel_parts: Count = setting(4, "parts of one file uploaded at once", EVERY)
    s3_retries: Tries = setting(5, "tries after the first for a failed store call", EVERY)

    # --- the controller ---------------------------------------------------------------
    state_url: SecretStr | None = setting(
        None, "SQLAlchemy URL of the state (its password is masked)", CONTROLLER,
        shown_default="`sqlite:///<data dir>/state.db`",
    )  # fmt: skip
    workers: StagePairs = setting({}, "`host:port` of each `static` stage", CONTROLLER)
    limits: StageCounts = setting(
        {}, "most attempts of a stage at once", CONTROLLER,
        shown_default="1 for a `static` stage, else its workers' capacity",
    )  # fmt: skip
    providers: StagePairs = setting(
        {}, "worker provider per stage: `static`, `k8s-job`, `k8s-pool`", CONTROLLER,
        shown_default="`static`",
    )  # fmt: skip
    metrics_port: Port = setting(9090, "Prometheus `/metrics` port", CONTROLLER, keep_empty=True)
    heartbeat_timeout_s: Seconds = setting(
        60.0, "a stage stream silent this long is retried", CONTROLLER
    )
    unreachable_timeout_s: Seconds = setting(
        600.0, "how long a stage waits for workers that do not answer", CONTROLLER
    )
    state_reconnect_s: Seconds = setting(
        30.0, "how long a state call waits for the database to come back", CONTROLLER
    )
    retry_attempts: Count = setting(4, "attempts of a stage for retryable failures", CONTROLLER)
    retry_backoff_s: Seconds = setting(
        2.0, "the first backoff between attempts, doubling after each", CONTROLLER
    )
    max_upload_gib: GiB = setting(
        20.0, "the largest input `tuneship submit` uploads through the controller", CONTROLLER
    )
    k8s_namespace: str = setting("", "namespace of the Jobs and pools (k8s providers)", CONTROLLER)
    job_templates: Path = setting(
        Path("/etc/tuneship/jobs"), "directory of `<stage>.yaml` Job templates", CONTROLLER
    )
    pools: StagePairs = setting({}, "headless Service of each `k8s-pool` stage", CONTROLLER)
    pool_capacity: StageCounts = setting(
        {}, "tasks one pool pod runs at once", CONTROLLER, shown_default="1"
    )
    unschedulable_timeout_s: Seconds = setting(
        900.0, "a Job pod unschedulable this long fails the attempt", CONTROLLER
    )
    start_timeout_s: Seconds = setting(
        1800.0, "a scheduled Job pod not Ready this long fails the attempt", CONTROLLER
    )
    multinode_kind: MultiNodeKind = setting(
        "jobset", "what runs a training with `train.nodes` > 1: a JobSet or a Kubeflow TrainJob",
        CONTROLLER,
    )  # fmt: skip
    trainjob_runtime: str = setting(
        "torch-distributed", "the ClusterTrainingRuntime a TrainJob references", CONTROLLER
    )
    rendezvous_port: Port = setting(
        29400, "torchrun's rendezvous port on node 0 of a JobSet (`PET_MASTER_PORT`)", CONTROLLER
    )
    max_nodes: Count = setting(8, "the most nodes one training may ask for", CONTROLLER)

    # --- stage services ----------------------------------------------------------------
    work_dir: Path = setting(Path("/tmp/tuneship"), "scratch space of a stage service", WORKERS)
    capacity: Count = setting(1, "tasks a stage service runs at once", WORKERS)
    task_id: str = setting("", "the one task of `tuneship serve --once` (set per Job)", WORKERS)
    stage_job: str = setting(
        "", "the serialized job of a training's pods on nodes > 0 (set per JobSet/TrainJob)",
        ("trainer",),
    )  # fmt: skip
    node_rank: Tries = setting(
        0, "torchrun's node rank; > 0 makes `serve trainer --once` a follower of node 0",
        ("trainer",), env="PET_NODE_RANK",
    )  # fmt: skip
    once_grace_s: Seconds = setting(
        600.0, "`--once`: how long a finished task waits to be read", WORKERS
    )
    serving_backend: ServingBackendKind = setting("ollama", "what serves the models", ("serving",))
    serving_sync_s: Seconds = setting(
        30.0, "how often a serving replica picks up models published elsewhere (0: never)",
        ("serving",),
    )  # fmt: skip
    ollama_host: str = setting(
        "http://127.0.0.1:11434", "the Ollama server (the serving sidecar)",
        ("serving", "run", "cli"), env="OLLAMA_HOST",
    )  # fmt: skip

    # --- authentication and TLS (``AuthSettings.from_loaded`` builds on these) ------
    api_tokens: SecretStr | None = setting(
        None, "tokens the controller's user API accepts (comma- or newline-separated)",
        CONTROLLER,
    )  # fmt: skip
    worker_token: SecretStr | None = setting(
        None, "the token stage services accept; the controller sends the first", SERVICES
    )
    tls_cert: Path | None = setting(None, "serve TLS with this certificate chain (PEM)", SERVICES)
    tls_key: Path | None = setting(None, "the private key of `TUNESHIP_TLS_CERT`", SERVICES)
    tls_client_ca: Path | None = setting(
        None, "require client certificates signed by this CA (mutual TLS)", SERVICES
    )
    worker_ca: Path | None = setting(
        None, "dial the stage services with TLS, checking them against this CA", CONTROLLER
    )
    worker_cert: Path | None = setting(
        None, "client certificate shown to the stage services", CONTROLLER
    )
    worker_key: Path | None = setting(None, "its private key", CONTROLLER)
    worker_tls_name: str | None = setting(
        None, "the name the stage services' certificates carry", CONTROLLER
    )
    insecure: Boolean = setting(
        False, "let a server listen beyond loopback with no token", SERVICES
    )

    # --- clients (`tuneship submit`, `list`, `chat`, ...) ------------------------------
    controller: str = setting("127.0.0.1:50051", "the controller's `host:port`", ("cli",))
    token: SecretStr | None = setting(
        None, "the token sent to the controller (`--token`, `--token-file`)", ("cli",)
    )
    ca: Path | None = setting(
        None, "check the controller's certificate against this CA (`--ca`)", ("cli",)
    )
    cert: Path | None = setting(None, "client certificate for mutual TLS (`--cert`)", ("cli",))
    key: Path | None = setting(None, "its private key (`--key`)", ("cli",))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what ``load_env`` hands over: the environment mapping of the entry point
        # (``EnvironmentSource``), never ``os.environ`` behind its back, nor .env files.
        return (init_settings,)


def variable(name: str) -> str:
    """The environment variable of field ``name``."""
    extra = TuneshipEnv.model_fields[name].json_schema_extra
    assert isinstance(extra, dict)
    return str(extra.get("env") or PREFIX + name.upper())


def field_extra(name: str) -> dict[str, Any]:
    extra = TuneshipEnv.model_fields[name].json_schema_extra
    assert isinstance(extra, dict)
    return extra


def is_secret(name: str) -> bool:
    """Whether field ``name`` holds a secret (masked; also read from ``<VAR>_FILE``)."""
    annotation = TuneshipEnv.model_fields[name].annotation
    return annotation is SecretStr or annotation == SecretStr | None


OTHER_VARIABLES = {
    "TUNESHIP_MOTO_SERVER": "the test suite's S3 server (tests/conftest.py)",
    "TUNESHIP_VERSION": "the images' version (a build argument)",
}
"""``TUNESHIP_*`` names that are not settings of a process but are not typos either."""
