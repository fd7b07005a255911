"""The typed settings: every TUNESHIP_* variable parses strictly, a bad value names
its variable, secrets come from files and never show, typos are warned about."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from tuneship.common.errors import InvalidInput
from tuneship.common.settings import Settings, TuneshipEnv, is_secret, load_env, variable
from tuneship.common.settings.report import config_lines, mask_url_password
from tuneship.common.store import StoreSettings

pytestmark = pytest.mark.unit

# One good text per variable and the value it must give; a new setting needs a row.
SAMPLES: dict[str, tuple[str, Any]] = {
    "TUNESHIP_CACHE_DIR": ("/c", Path("/c")),
    "TUNESHIP_TOOLCHAIN_DIR": ("/t", Path("/t")),
    "TUNESHIP_DATA_DIR": ("/d", Path("/d")),
    "TUNESHIP_LOG_FORMAT": ("JSON", "json"),
    "TUNESHIP_LOG_LEVEL": ("debug", "debug"),
    "TUNESHIP_STORE": ("s3://b/p", "s3://b/p"),
    "TUNESHIP_S3_ENDPOINT": ("minio:9000", "minio:9000"),
    "TUNESHIP_S3_ACCESS_KEY": ("AKIAEXAMPLE", "AKIAEXAMPLE"),
    "TUNESHIP_S3_SECRET_KEY": ("s3-secret-value", "s3-secret-value"),
    "TUNESHIP_S3_SECURE": ("off", False),
    "TUNESHIP_S3_REGION": ("eu-west-1", "eu-west-1"),
    "TUNESHIP_S3_PART_SIZE_MIB": ("64", 64),
    "TUNESHIP_S3_PARALLEL_PARTS": ("8", 8),
    "TUNESHIP_S3_RETRIES": ("0", 0),
    "TUNESHIP_STATE_URL": ("postgresql://u:pw@db/x", "postgresql://u:pw@db/x"),
    "TUNESHIP_WORKERS": ("train=a:1, merge=b:2", {"train": "a:1", "merge": "b:2"}),
    "TUNESHIP_LIMITS": ("train=4,merge=2", {"train": 4, "merge": 2}),
    "TUNESHIP_PROVIDERS": ("train=k8s-job", {"train": "k8s-job"}),
    "TUNESHIP_METRICS_PORT": ("", None),
    "TUNESHIP_HEARTBEAT_TIMEOUT_S": ("1.5", 1.5),
    "TUNESHIP_UNREACHABLE_TIMEOUT_S": ("0", 0.0),
    "TUNESHIP_STATE_RECONNECT_S": ("5", 5.0),
    "TUNESHIP_RETRY_ATTEMPTS": ("7", 7),
    "TUNESHIP_RETRY_BACKOFF_S": ("3", 3.0),
    "TUNESHIP_MAX_UPLOAD_GIB": ("0.5", 0.5),
    "TUNESHIP_K8S_NAMESPACE": ("ml", "ml"),
    "TUNESHIP_JOB_TEMPLATES": ("/j", Path("/j")),
    "TUNESHIP_POOLS": ("export=svc", {"export": "svc"}),
    "TUNESHIP_POOL_CAPACITY": ("publish=4", {"publish": 4}),
    "TUNESHIP_UNSCHEDULABLE_TIMEOUT_S": ("90", 90.0),
    "TUNESHIP_START_TIMEOUT_S": ("120", 120.0),
    "TUNESHIP_MULTINODE_KIND": ("TrainJob", "trainjob"),
    "TUNESHIP_TRAINJOB_RUNTIME": ("torch-distributed", "torch-distributed"),
    "TUNESHIP_RENDEZVOUS_PORT": ("29500", 29500),
    "TUNESHIP_MAX_NODES": ("4", 4),
    "TUNESHIP_STAGE_JOB": ("CgFh", "CgFh"),
    "PET_NODE_RANK": ("1", 1),
    "TUNESHIP_WORK_DIR": ("/w", Path("/w")),
    "TUNESHIP_CAPACITY": ("2", 2),
    "TUNESHIP_TASK_ID": ("p.train.1", "p.train.1"),
    "TUNESHIP_ONCE_GRACE_S": ("5", 5.0),
    "TUNESHIP_SERVING_BACKEND": ("llama-server", "llama-server"),
    "TUNESHIP_SERVING_SYNC_S": ("0", 0.0),
    "OLLAMA_HOST": ("http://o:1", "http://o:1"),
    "TUNESHIP_API_TOKENS": ("a-token,b-token", "a-token,b-token"),
    "TUNESHIP_WORKER_TOKEN": ("worker-token", "worker-token"),
    "TUNESHIP_TLS_CERT": ("/tls/crt", Path("/tls/crt")),
    "TUNESHIP_TLS_KEY": ("/tls/key", Path("/tls/key")),
    "TUNESHIP_TLS_CLIENT_CA": ("/tls/ca", Path("/tls/ca")),
    "TUNESHIP_WORKER_CA": ("/w/ca", Path("/w/ca")),
    "TUNESHIP_WORKER_CERT": ("/w/crt", Path("/w/crt")),
    "TUNESHIP_WORKER_KEY": ("/w/key", Path("/w/key")),
    "TUNESHIP_WORKER_TLS_NAME": ("worker.local", "worker.local"),
    "TUNESHIP_INSECURE": ("yes", True),
    "TUNESHIP_CONTROLLER": ("c:50051", "c:50051"),
    "TUNESHIP_TOKEN": ("user-token", "user-token"),
    "TUNESHIP_CA": ("/c/ca", Path("/c/ca")),
    "TUNESHIP_CERT": ("/c/crt", Path("/c/crt")),
    "TUNESHIP_KEY": ("/c/key", Path("/c/key")),
}


def plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def test_every_variable_parses_and_says_where_it_came_from() -> None:
    fields = {variable(name): name for name in TuneshipEnv.model_fields}
    assert set(SAMPLES) == set(fields)
    loaded = load_env({var: text for var, (text, _) in SAMPLES.items()})
    for var, (_, expected) in SAMPLES.items():
        assert plain(getattr(loaded.values, fields[var])) == expected, var
        assert loaded.origin(fields[var]) == f"env {var}"


def test_defaults_and_empty_values() -> None:
    loaded = load_env({"TUNESHIP_CAPACITY": "", "TUNESHIP_WORK_DIR": "  "})
    values = loaded.values
    assert (values.capacity, values.work_dir) == (1, Path("/tmp/tuneship"))  # empty: unset
    assert values.metrics_port == 9090 and values.s3_secure is True
    assert loaded.origin("capacity") == "default"
    settings = Settings.from_env({"HOME": "/home/u", "TUNESHIP_DATA_DIR": "/d"})
    assert (settings.cache_dir, settings.data_dir) == (Path("/home/u/.cache/tuneship"), Path("/d"))


@pytest.mark.parametrize(
    ("var", "text", "says"),
    [
        ("TUNESHIP_S3_SECURE", "ture", "'ture' is not a boolean: use true/false/1/0"),
        ("TUNESHIP_INSECURE", "2", "'2' is not a boolean"),
        ("TUNESHIP_CAPACITY", "two", "'two' is not a whole number"),
        ("TUNESHIP_CAPACITY", "0", "'0' is too small: use a whole number >= 1"),
        ("TUNESHIP_S3_RETRIES", "1.5", "'1.5' is not a whole number"),
        ("TUNESHIP_S3_PART_SIZE_MIB", "4", "whole number >= 5"),
        ("TUNESHIP_HEARTBEAT_TIMEOUT_S", "10m", "'10m' is not a number of seconds"),
        ("TUNESHIP_RETRY_BACKOFF_S", "-1", "out of range: use a number of seconds >= 0"),
        ("TUNESHIP_START_TIMEOUT_S", "nan", "out of range"),
        ("TUNESHIP_MAX_UPLOAD_GIB", "0", "use a number of GiB > 0"),
        ("TUNESHIP_METRICS_PORT", "70000", "not a port"),
        ("TUNESHIP_WORKERS", "train=a,merge", "'merge' is not stage=value"),
        ("TUNESHIP_PROVIDERS", "trian=k8s-job", "'trian' is not a stage: use train, merge"),
        ("TUNESHIP_LIMITS", "train=1,train=2", "'train' is named twice"),
        ("TUNESHIP_POOL_CAPACITY", "export=0", "export='0': '0' is too small"),
        ("TUNESHIP_LOG_FORMAT", "yaml", "'yaml' is not one of: text, json"),
        ("TUNESHIP_SERVING_BACKEND", "vllm", "not one of: ollama, llama-server"),
    ],
)
def test_a_bad_value_names_the_variable_what_it_got_and_what_is_accepted(
    var: str, text: str, says: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_env({var: text})
    assert caught.value.where == var
    assert says in caught.value.message
    assert "pydantic" not in caught.value.render() and "errors.pydantic.dev" not in str(
        caught.value
    )


def test_several_bad_values_are_reported_together() -> None:
    with pytest.raises(InvalidInput) as caught:
        load_env({"TUNESHIP_S3_SECURE": "ture", "TUNESHIP_CAPACITY": "x"})
    rendered = caught.value.render()
    assert "TUNESHIP_S3_SECURE" in rendered and "TUNESHIP_CAPACITY" in rendered


def test_secrets_come_from_files_with_one_trailing_newline_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-the-file\n\n")
    loaded = load_env({"TUNESHIP_S3_SECRET_KEY_FILE": str(secret)})
    assert loaded.values.s3_secret_key.get_secret_value() == "from-the-file\n"
    assert loaded.origin("s3_secret_key") == f"file {secret} (TUNESHIP_S3_SECRET_KEY_FILE)"
    for name in ("api_tokens", "worker_token", "token", "state_url", "s3_access_key"):
        assert is_secret(name)
        (tmp_path / name).write_text("v-" + name + "\n")
        values = load_env({f"{variable(name)}_FILE": str(tmp_path / name)}).values
        assert getattr(values, name).get_secret_value() == "v-" + name


def test_a_secret_set_twice_or_unreadable_is_an_error_naming_it(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    with pytest.raises(InvalidInput, match="both") as both:
        load_env({"TUNESHIP_TOKEN": "y", "TUNESHIP_TOKEN_FILE": str(secret)})
    assert both.value.where == "TUNESHIP_TOKEN"
    with pytest.raises(InvalidInput, match="cannot read") as missing:
        load_env({"TUNESHIP_S3_SECRET_KEY_FILE": str(tmp_path / "absent")})
    assert missing.value.where == "TUNESHIP_S3_SECRET_KEY_FILE"
    # Only secrets have a _FILE form: elsewhere it is an unknown variable, not a path.
    assert load_env({"TUNESHIP_STORE_FILE": str(secret)}).unknown == ("TUNESHIP_STORE_FILE",)


SECRETS = {
    "TUNESHIP_S3_SECRET_KEY": "s3-secret-6f1d",
    "TUNESHIP_S3_ACCESS_KEY": "access-9a2b",
    "TUNESHIP_API_TOKENS": "api-token-77c1",
    "TUNESHIP_WORKER_TOKEN": "worker-token-3e5f",
    "TUNESHIP_STATE_URL": "postgresql+psycopg://tuneship:db-pass-41aa@db:5432/tuneship",
}


def test_secrets_are_masked_in_print_config_and_reprs() -> None:
    loaded = load_env(SECRETS)
    lines = "\n".join(config_lines(loaded, "controller"))
    for value in (*SECRETS.values(), "db-pass-41aa"):
        if "://" not in value:
            assert value not in lines
        assert value not in repr(loaded.values) and value not in str(loaded.values)
    assert "TUNESHIP_S3_SECRET_KEY=********  " in lines
    assert "TUNESHIP_STATE_URL=postgresql+psycopg://tuneship:********@db:5432/tuneship" in lines
    assert "db-pass-41aa" not in lines
    store = StoreSettings.from_loaded(loaded.values)
    assert "s3-secret-6f1d" not in repr(store)
    assert mask_url_password("sqlite:////var/lib/x.db") == "sqlite:////var/lib/x.db"


def test_print_config_shows_values_and_their_origins(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k\n")
    env = {"TUNESHIP_LIMITS": "train=2", "TUNESHIP_S3_SECRET_KEY_FILE": str(tmp_path / "key")}
    lines = config_lines(load_env(env), "controller")
    by_var = {line.split("=", 1)[0]: line for line in lines}
    assert by_var["TUNESHIP_LIMITS"].endswith("# env TUNESHIP_LIMITS")
    assert by_var["TUNESHIP_LIMITS"].startswith("TUNESHIP_LIMITS=train=2 ")
    assert by_var["TUNESHIP_S3_SECRET_KEY"].endswith(f"# file {tmp_path / 'key'} "
                                                     "(TUNESHIP_S3_SECRET_KEY_FILE)")  # fmt: skip
    assert by_var["TUNESHIP_RETRY_ATTEMPTS"].endswith("# default")
    assert "TUNESHIP_CAPACITY" not in by_var  # a stage service's, not the controller's
    assert "TUNESHIP_CAPACITY" in {ln.split("=")[0] for ln in config_lines(load_env({}), "trainer")}


def test_an_unknown_variable_is_warned_about_with_close_matches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tuneship.settings"):
        loaded = load_env({"TUNESHIP_STROE": "s3://b", "TUNESHIP_MOTO_SERVER": "/x", "HOME": "/"})
    assert loaded.unknown == ("TUNESHIP_STROE",)
    assert loaded.values.store is None
    warned = [r.getMessage() for r in caplog.records]
    assert any("TUNESHIP_STROE" in m and "did you mean TUNESHIP_STORE" in m for m in warned)
    assert "# TUNESHIP_STROE: not a tuneship setting" in config_lines(loaded, "controller")[-1]
