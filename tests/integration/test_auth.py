"""Tokens and TLS on real gRPC servers on loopback: who may call what.

The controller's user API takes user tokens (several, for rotation) and refuses the
worker token; stage servers take the worker token only; health checks need nothing,
reflection needs a token. TLS refuses the wrong CA, an expired server certificate and,
with mutual TLS, a client without a certificate of the right CA. One pipeline runs
through a controller and stage servers with tokens and mutual TLS everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tuneship.client import PipelineClient
from tuneship.common.auth import AuthSettings, ClientTls, ServerTls, Token
from tuneship.common.errors import TuneshipError
from tuneship.common.guard import dial, stage_security
from tuneship.common.stages import STAGES
from tuneship.common.store import LocalStore
from tuneship.common.wire import StageServicer, stage_service
from tuneship.controller.inputs import input_uploader
from tuneship.testing.cluster import Cluster, start_cluster
from tuneship.testing.kube.tls import CertificateAuthority
from tuneship.testing.stages import ScriptedStage
from tuneship.v1 import pipeline_pb2, pipeline_pb2_grpc, stage_pb2, workers_pb2, workers_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

USER, ROTATED, WORKER = Token("user-token-1"), Token("user-token-2"), Token("worker-token")
SPEC = """apiVersion: tuneship/v1
metadata: {name: guarded}
model: {base: s3://models/tiny}
dataset: {train: s3://data/train.jsonl}
"""
CODE = grpc.StatusCode


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: tuple[Path, Path]
    worker: tuple[Path, Path]
    """Names only ``tuneship-worker``: dialled by IP, checked by that name."""
    client: tuple[Path, Path]
    expired: tuple[Path, Path]
    other_ca: CertificateAuthority
    other_client: tuple[Path, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other = CertificateAuthority(root / "ca"), CertificateAuthority(root / "other", "other")
    return Pki(
        ca, ca.issue("server"), ca.issue("worker", hosts=("tuneship-worker",)),
        ca.issue("client"), ca.issue("expired", expired=True), other, other.issue("client"),
    )  # fmt: skip


def scripted() -> dict[str, ScriptedStage]:
    return {name: ScriptedStage(name) for name in STAGES}


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator:
    made: list[Cluster] = []

    def make(**kwargs) -> Cluster:
        root = tmp_path / str(len(made))
        root.mkdir()
        cluster = start_cluster(root, scripted(), {}, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def code_of(call, *args) -> grpc.StatusCode:
    try:
        answer = call(*args, timeout=10)
        if hasattr(answer, "__next__"):
            next(answer)
    except grpc.RpcError as error:
        return error.code()
    return CODE.OK


def tokened(token: Token | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token.reveal()}")] if token else []


def list_call(channel: grpc.Channel, token: Token | None, details: list[str]) -> grpc.StatusCode:
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    try:
        stub.List(pipeline_pb2.ListRequest(), metadata=tokened(token), timeout=10)
    except grpc.RpcError as error:
        details.append(error.details())
        return error.code()
    return CODE.OK


def test_the_user_api_takes_user_tokens_and_refuses_the_worker_token(clusters) -> None:
    auth = AuthSettings(api_tokens=(USER, ROTATED), worker_tokens=(WORKER,))
    cluster = clusters(auth=auth, worker_auth=AuthSettings(worker_tokens=(WORKER,)))
    channel = grpc.insecure_channel(cluster.controller.address)
    said: list[str] = []
    assert list_call(channel, None, said) is CODE.UNAUTHENTICATED
    assert "--token" in said[-1] and "TUNESHIP_TOKEN" in said[-1]
    assert list_call(channel, Token("not-a-token"), said) is CODE.UNAUTHENTICATED
    assert "not valid" in said[-1] and "not-a-token" not in said[-1]
    assert list_call(channel, WORKER, said) is CODE.PERMISSION_DENIED
    assert list_call(channel, USER, said) is CODE.OK
    assert list_call(channel, ROTATED, said) is CODE.OK  # both while rotating
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # kubelet probes: no token
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
    asked = [reflection_pb2.ServerReflectionRequest(list_services="")]
    assert code_of(reflection, iter(asked)) is CODE.UNAUTHENTICATED
    answer = reflection(iter(asked), metadata=tokened(USER), timeout=5)
    assert "tuneship.v1.PipelineService" in str(next(answer))

    # The whole pipeline: the controller reaches the stage servers with the worker token.
    pid = cluster.stub.Submit(pipeline_pb2.SubmitRequest(spec_yaml=SPEC)).id
    cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    watch = pipeline_pb2_grpc.PipelineServiceStub(channel).Watch
    assert code_of(watch, pipeline_pb2.WatchRequest(id=pid)) is CODE.UNAUTHENTICATED
    client = PipelineClient(cluster.controller.address, token=USER.reveal())
    events = list(client.watch(pid))
    assert events[-1].phase == "succeeded" and any(e.kind == "progress" for e in events)
    assert "".join(client.chat(pid, [{"role": "user", "content": "ahoy"}])).endswith("heard ahoy")
    with pytest.raises(TuneshipError, match="PERMISSION_DENIED"):
        PipelineClient(cluster.controller.address, token=WORKER).get(pid)


def test_stage_servers_take_the_worker_token_only() -> None:
    stage = StageServicer("merge", ScriptedStage("merge"), keepalive_s=0.5)
    server = stage_service(stage).start(
        security=stage_security(AuthSettings(worker_tokens=(WORKER,)))
    )
    try:
        stub = workers_pb2_grpc.MergerServiceStub(grpc.insecure_channel(server.address))
        cancel = stage_pb2.CancelRequest(task_id="t")
        expected = {None: CODE.UNAUTHENTICATED, USER: CODE.UNAUTHENTICATED,
                    Token("wrong"): CODE.UNAUTHENTICATED, WORKER: CODE.OK}  # fmt: skip
        got = {}
        for token in expected:
            metadata = tokened(token)
            got[token] = code_of(
                lambda r, m=metadata, **kw: stub.Cancel(r, metadata=m, **kw), cancel
            )
        assert list(got.values()) == list(expected.values())
        job = stage_pb2.StageRequest()  # no task id: the servicer would say INVALID_ARGUMENT
        assert code_of(stub.Merge, job) is CODE.UNAUTHENTICATED  # a stream: refused first
        with_token = code_of(lambda r, **kw: stub.Merge(r, metadata=tokened(WORKER), **kw), job)
        assert with_token is CODE.INVALID_ARGUMENT
    finally:
        server.stop(0)


def test_uploads_need_the_user_token(clusters, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    cluster = clusters(auth=AuthSettings(api_tokens=(USER,)), upload_inputs=input_uploader(store))
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    anonymous = PipelineClient(cluster.controller.address)
    with pytest.raises(TuneshipError, match="UNAUTHENTICATED"):
        anonymous.upload_input(data, kind="dataset")
    stub = pipeline_pb2_grpc.PipelineServiceStub(grpc.insecure_channel(cluster.controller.address))
    chunks = iter([pipeline_pb2.UploadChunk(data=b"x")])
    assert code_of(stub.UploadInput, chunks) is CODE.UNAUTHENTICATED
    uploaded = PipelineClient(cluster.controller.address, token=USER).upload_input(data, "dataset")
    assert uploaded.location.startswith("store:") and store.exists(uploaded.key)


def health_code(address: str, tls: ClientTls | None) -> grpc.StatusCode:
    stub = health_pb2_grpc.HealthStub(dial(address, tls=tls))
    return code_of(stub.Check, health_pb2.HealthCheckRequest())


def test_tls_refuses_the_wrong_ca_an_expired_certificate_and_plain_clients(pki: Pki) -> None:
    def serving(cert: tuple[Path, Path]):
        security = stage_security(AuthSettings(tls=ServerTls(*cert)))
        return stage_service(StageServicer("merge", ScriptedStage("merge"))).start(
            security=security
        )

    good, expired = serving(pki.server), serving(pki.expired)
    try:
        assert health_code(good.address, ClientTls(pki.ca.cert)) is CODE.OK
        assert health_code(good.address, ClientTls(pki.other_ca.cert)) is CODE.UNAVAILABLE
        assert health_code(good.address, None) is CODE.UNAVAILABLE  # plain text to a TLS port
        assert health_code(expired.address, ClientTls(pki.ca.cert)) is CODE.UNAVAILABLE
        with pytest.raises(TuneshipError, match=r"TLS with the controller .* failed"):
            PipelineClient(good.address, timeout_s=5, ca=pki.other_ca.cert).list()
    finally:
        good.stop(0)
        expired.stop(0)


def test_mutual_tls_needs_a_client_certificate_of_the_ca(pki: Pki) -> None:
    tls = ServerTls(*pki.server, client_ca=pki.ca.cert)
    server = stage_service(StageServicer("merge", ScriptedStage("merge"))).start(
        security=stage_security(AuthSettings(tls=tls))
    )
    try:
        assert health_code(server.address, ClientTls(pki.ca.cert)) is CODE.UNAVAILABLE
        assert (
            health_code(server.address, ClientTls(pki.ca.cert, *pki.other_client))
            is CODE.UNAVAILABLE
        )
        assert health_code(server.address, ClientTls(pki.ca.cert, *pki.expired)) is CODE.UNAVAILABLE
        assert health_code(server.address, ClientTls(pki.ca.cert, *pki.client)) is CODE.OK
    finally:
        server.stop(0)


def test_a_pipeline_through_tokens_and_mutual_tls_everywhere(clusters, pki: Pki) -> None:
    worker_auth = AuthSettings(
        worker_tokens=(WORKER,), tls=ServerTls(*pki.worker, client_ca=pki.ca.cert)
    )
    auth = AuthSettings(
        api_tokens=(USER,), worker_tokens=(WORKER,),
        tls=ServerTls(*pki.server, client_ca=pki.ca.cert),
        # Workers are dialled at 127.0.0.1; their certificate names tuneship-worker.
        worker_tls=ClientTls(pki.ca.cert, *pki.client, server_name="tuneship-worker"),
    )  # fmt: skip
    cluster = clusters(
        auth=auth, worker_auth=worker_auth, client_tls=ClientTls(pki.ca.cert, *pki.client)
    )
    pid = cluster.stub.Submit(pipeline_pb2.SubmitRequest(spec_yaml=SPEC)).id
    done = cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    assert all(s.attempts == 1 for s in done.stages)
    client = PipelineClient(cluster.controller.address, token=USER, ca=pki.ca.cert,
                            cert=pki.client[0], key=pki.client[1])  # fmt: skip
    assert [e.phase for e in client.watch(pid)][-1] == "succeeded"
    chat = pipeline_pb2.PipelineChatRequest(
        id=pid, messages=[workers_pb2.ChatMessage(role="user", content="ahoy")])  # fmt: skip
    assert list(cluster.stub.Chat(chat))[-1].done
    # Without the client certificate the handshake fails, token or not.
    bare = PipelineClient(cluster.controller.address, timeout_s=5, token=USER, ca=pki.ca.cert)
    with pytest.raises(TuneshipError, match="give --cert/--key"):
        bare.list()
