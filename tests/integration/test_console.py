"""The web console over HTTP, in front of a real controller on loopback gRPC.

Stage workers are scripted (``tuneship.testing.stages``); the console, the controller,
the sessions and the server-sent events are the real ones. What is checked is what a
person relies on: nothing without a session, no action without the page's CSRF token,
the token never in a page or a cookie, filters, stage errors, the live stream, a bad
spec's problems on its lines, cancel.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tuneship.common.store import LocalStore
from tuneship.console.sessions import COOKIE
from tuneship.testing.console import FILES, TOKEN, ConsoleUser, Rig, console_stages, start_rig
from tuneship.testing.stages import ScriptedStage
from tuneship.v1 import pipeline_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SPEC = """apiVersion: tuneship/v1
metadata:
  name: {name}
  labels: {{batch: {batch}}}
model: {{base: s3://models/tiny}}
dataset: {{train: s3://data/train.jsonl}}
"""


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    store = LocalStore(tmp_path / "store")  # the stages commit their FILES there
    started = start_rig(tmp_path, console_stages(store), store=store)
    yield started
    started.stop()


@pytest.fixture
def user(rig: Rig) -> Iterator[ConsoleUser]:
    person = ConsoleUser(rig.url)
    assert person.login(TOKEN.reveal()).status_code == 303
    yield person
    person.close()


def submitted(user: ConsoleUser, name: str, batch: str = "b1") -> str:
    user.page("/submit")
    answer = user.post("/submit", spec=SPEC.format(name=name, batch=batch))
    assert answer.status_code == 303, answer.text
    return answer.headers["location"].rsplit("/", 1)[1]


def test_nothing_is_served_without_a_session(rig: Rig) -> None:
    anonymous = httpx.Client(base_url=rig.url, timeout=10)
    for path in ("/", "/pipelines/rows", "/submit", "/pipelines/p-1", "/pipelines/p-1/live",
                 "/pipelines/p-1/events", "/pipelines/p-1/confirm/cancel", "/compare",
                 "/pipelines/p-1/chat", "/pipelines/p-1/files/export/export/report.md",
                 "/no-such-page"):  # fmt: skip
        answer = anonymous.get(path)
        assert answer.status_code == 401, path
        assert COOKIE not in answer.headers.get("set-cookie", ""), path
    for path in ("/submit", "/pipelines/p-1/cancel", "/pipelines/p-1/retry",
                 "/pipelines/p-1/delete", "/logout", "/pipelines/p-1/chat",
                 "/pipelines/p-1/chat/stream"):  # fmt: skip
        assert anonymous.post(path, data={"csrf": "x"}).status_code == 401, path
    # A made-up session id is no session.
    anonymous.cookies.set(COOKIE, "forged")
    assert anonymous.get("/").status_code == 401
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/static/console.css").status_code == 200
    assert anonymous.get("/login").status_code == 200
    anonymous.close()


def test_login_checks_the_token_with_the_controller_and_keeps_it_off_the_browser(rig) -> None:
    person = ConsoleUser(rig.url)
    refused = person.login("not-the-token")
    assert refused.status_code == 401 and "refused this token" in refused.text
    assert COOKIE not in person.http.cookies
    # The login form's own nonce (login CSRF): a post without it is refused.
    assert person.http.post("/login", data={"token": TOKEN.reveal()}).status_code == 403
    accepted = person.login(TOKEN.reveal())
    assert accepted.status_code == 303
    cookie = accepted.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert TOKEN.reveal() not in cookie
    for path in ("/", "/submit"):
        page = person.page(path)
        assert page.status_code == 200 and TOKEN.reveal() not in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
    assert person.post("/logout").status_code == 303
    assert person.http.get("/").status_code == 401


def test_every_action_needs_the_csrf_token_of_the_session(rig: Rig, user: ConsoleUser) -> None:
    pid = submitted(user, "guarded")
    rig.cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    for action in ("cancel", "retry", "delete"):
        assert user.http.post(f"/pipelines/{pid}/{action}").status_code == 403
        wrong = user.http.post(f"/pipelines/{pid}/{action}", data={"csrf": "x" * 43})
        assert wrong.status_code == 403
    assert (
        user.http.post("/submit", data={"spec": SPEC.format(name="x", batch="b")}).status_code
        == 403
    )
    other = ConsoleUser(rig.url)
    other.login(TOKEN.reveal())
    assert other.csrf and other.csrf != user.csrf  # one token per session
    assert other.http.post(f"/pipelines/{pid}/delete", data={"csrf": user.csrf}).status_code == 403
    other.close()
    assert user.post(f"/pipelines/{pid}/delete").status_code == 303
    assert user.page(f"/pipelines/{pid}").status_code == 404


def test_list_filters_searches_and_groups_by_batch(rig: Rig, user: ConsoleUser) -> None:
    a1, a2 = submitted(user, "alpha-one", "sweep-a"), submitted(user, "alpha-two", "sweep-a")
    b1 = submitted(user, "beta-one", "sweep-b")
    for pid in (a1, a2, b1):
        rig.cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    page = user.page("/").text
    assert "Batch sweep-a" in page and "Batch sweep-b" in page
    assert page.index("Batch sweep-b") < page.index("Batch sweep-a")  # newest first
    only_a = user.page("/pipelines/rows?labels=batch%3Dsweep-a").text
    assert a1 in only_a and a2 in only_a and b1 not in only_a
    found = user.page("/?q=TWO").text
    assert a2 in found and a1 not in found and b1 not in found
    assert b1 in user.page("/?phase=succeeded").text
    assert "No pipelines match" in user.page("/?phase=failed").text
    bad = user.page("/?labels=nonsense")
    assert bad.status_code == 200 and "is not key=value" in bad.text


def test_pipeline_page_shows_stages_errors_chart_report_and_retry_from_the_console(
    tmp_path: Path,
) -> None:
    broken = ScriptedStage("merge", failures={1: "InvalidInput"})
    rig = start_rig(tmp_path, console_stages(merge=broken))
    user = ConsoleUser(rig.url)
    try:
        user.login(TOKEN.reveal())
        pid = submitted(user, "broken")
        rig.cluster.wait(pid, pipeline_pb2.FAILED)
        page = user.page(f"/pipelines/{pid}").text
        merge_row = re.search(r'<tr data-stage="merge">(.*?)</tr>', page, re.S)
        assert merge_row is not None
        assert "failed" in merge_row.group(
            1
        ) and "scripted InvalidInput on attempt 1" in merge_row.group(1)
        assert re.search(r'data-stage="train">.*?succeeded.*?<td>1</td>', page, re.S)
        assert "<svg" in page and "eval_loss" in page and "training loss" in page.lower()
        assert "Retry…" in page and "Cancel…" not in page
        confirm = user.page(f"/pipelines/{pid}/confirm/retry")
        assert confirm.status_code == 200 and "Yes, retry" in confirm.text
        assert user.post(f"/pipelines/{pid}/retry").status_code == 303
        rig.cluster.wait(pid, pipeline_pb2.SUCCEEDED)
        done = user.page(f"/pipelines/{pid}/live").text
        assert re.search(r'data-stage="merge">.*?succeeded.*?<td>2</td>', done, re.S)
        report = re.search(r'<tr class="recommended">(.*?)</tr>', done, re.S)
        assert report is not None and "q8_0" in report.group(1) and "recommended" in report.group(1)
        assert "<td>99.0 %</td>" in report.group(1)  # the export reports percent already
        assert "q8_0 (recommended)</text>" in done  # and in the quality chart
        assert done.count("<tr") == 1 + 4 + 1 + 3  # stage header+rows, report header+rows
    finally:
        user.close()
        rig.stop()


def test_server_sent_events_replay_and_follow_the_pipeline(rig: Rig, user: ConsoleUser) -> None:
    pid = submitted(user, "streamed")
    events: list[dict] = []
    ended = False
    with user.http.stream("GET", f"/pipelines/{pid}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and name == "pipeline":
                events.append(json.loads(line.removeprefix("data: ")))
            elif name == "end":
                ended = True
                break
    assert ended
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    kinds = {e["kind"] for e in events}
    assert {"transition", "metrics", "progress", "log"} <= kinds
    losses = [e for e in events if e["kind"] == "metrics" and "eval_loss" in e["text"]]
    assert [e["step"] for e in losses] == [3, 6, 9, 12]
    assert events[-1]["phase"] == "succeeded"
    # A reconnecting browser sends the last id it saw: only later events come.
    middle = events[len(events) // 2]["seq"]
    with user.http.stream("GET", f"/pipelines/{pid}/events",
                          headers={"Last-Event-ID": str(middle)}) as again:  # fmt: skip
        seqs = [int(line.removeprefix("id: ")) for line in again.iter_lines()
                if line.startswith("id: ")]  # fmt: skip
    assert seqs == [e["seq"] for e in events if e["seq"] > middle]


def test_a_bad_spec_shows_its_problems_on_their_lines_and_is_not_submitted(
    rig: Rig, user: ConsoleUser
) -> None:
    bad = (
        "apiVersion: tuneship/v1\nmetadata: {name: bad}\nmodel:\n  bse: s3://m\n"
        "dataset: {train: s3://d}\ntrain: {lr: 1}\n"
    )
    user.page("/submit")
    answer = user.post("/submit", spec=bad)
    assert answer.status_code == 422
    problems: dict[str, list[str]] = {}
    for line, text in re.findall(r'data-line="(\d+)">line \d+: ([^<]*)<', answer.text):
        problems.setdefault(line, []).append(text)
    assert "model.bse: unknown field; did you mean &#39;base&#39;?" in problems["4"]
    assert any(p.startswith("train.lr: unknown field") for p in problems["6"])
    assert "s3://m" in answer.text  # the text is kept for fixing
    unparsable = user.post("/submit", spec="apiVersion: tuneship/v1\nmetadata: [\n")
    assert unparsable.status_code == 422 and "not valid YAML" in unparsable.text
    uploaded = user.http.post(
        "/submit", data={"csrf": user.csrf, "spec": ""},
        files={"file": ("spec.yaml", SPEC.format(name="uploaded", batch="u").encode())},
    )  # fmt: skip
    assert uploaded.status_code == 303
    assert rig.cluster.stub.List(pipeline_pb2.ListRequest()).pipelines[0].name == "uploaded"


def test_cancel_stops_a_running_pipeline(tmp_path: Path) -> None:
    rig = start_rig(tmp_path, console_stages(train=ScriptedStage("train", steps=400, step_s=0.05)))
    user = ConsoleUser(rig.url)
    try:
        user.login(TOKEN.reveal())
        pid = submitted(user, "long")
        rig.cluster.wait(pid, pipeline_pb2.RUNNING)
        page = user.page(f"/pipelines/{pid}").text
        assert "Cancel…" in page and "Delete…" not in page
        assert "Yes, cancel" in user.page(f"/pipelines/{pid}/confirm/cancel").text
        started = time.monotonic()
        assert user.post(f"/pipelines/{pid}/cancel").status_code == 303
        rig.cluster.wait(pid, pipeline_pb2.CANCELLED, timeout_s=10)
        assert time.monotonic() - started < 10
        assert "cancelled" in user.page(f"/pipelines/{pid}").text
    finally:
        user.close()
        rig.stop()


def test_no_login_on_loopback_in_front_of_a_controller_without_tokens(tmp_path: Path) -> None:
    rig = start_rig(tmp_path, console_stages(), tokens=False)
    person = ConsoleUser(rig.url)
    try:
        first = person.page("/")
        assert first.status_code == 200 and "Log out" not in first.text
        assert "HttpOnly" in first.headers["set-cookie"]
        assert person.http.post("/submit", data={"spec": "x"}).status_code == 403
        pid = submitted(person, "open")
        rig.cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    finally:
        person.close()
        rig.stop()


def test_chat_answers_through_the_controller_whole_and_streamed(
    rig: Rig, user: ConsoleUser
) -> None:
    pid = submitted(user, "chatty")
    rig.cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    assert "Chat with the model" in user.page(f"/pipelines/{pid}").text
    page = user.page(f"/pipelines/{pid}/chat")
    assert page.status_code == 200 and 'id="chat-form"' in page.text
    whole = user.post(f"/pipelines/{pid}/chat", history="[]", message="ahoy")
    assert whole.status_code == 200
    assert f"{pid}:latest heard ahoy" in whole.text
    history = json.dumps([{"role": "user", "content": "ahoy"},
                          {"role": "assistant", "content": "arr"}])  # fmt: skip
    with user.http.stream("POST", f"/pipelines/{pid}/chat/stream",
                          data={"csrf": user.csrf, "history": history,
                                "message": "again"}) as streamed:  # fmt: skip
        assert streamed.status_code == 200
        text = "".join(streamed.iter_text())
    assert text == f"{pid}:latest heard again"
    assert user.http.post(f"/pipelines/{pid}/chat/stream",
                          data={"history": "[]", "message": "x"}).status_code == 403  # fmt: skip
    bad = user.post(f"/pipelines/{pid}/chat/stream", history='[{"role": "system"}]', message="x")
    assert bad.status_code == 422


def test_a_batch_side_by_side_marks_the_hyperparameters_that_differ(
    rig: Rig, user: ConsoleUser
) -> None:
    user.page("/submit")
    ids = []
    for rate in ("0.0002", "0.001"):
        spec = SPEC.format(name=f"lr-{rate}", batch="sweep") + f"train: {{learning_rate: {rate}}}\n"
        answer = user.post("/submit", spec=spec)
        assert answer.status_code == 303, answer.text
        ids.append(answer.headers["location"].rsplit("/", 1)[1])
    for pid in ids:
        rig.cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    assert "/compare?labels=batch%3Dsweep" in user.page("/").text
    page = user.page("/compare?labels=batch%3Dsweep").text
    rows = {
        re.sub(r"<[^>]+>", "", head).strip(): re.findall(r"<td>([^<]*)</td>", cells)
        for head, cells in re.findall(r'<th scope="row">(.*?)</th>(.*?)</tr>', page, re.S)
    }
    assert rows["train.learning_rate differs"] == ["0.0002", "0.001"]  # oldest first
    assert rows["train.method"] == ["lora", "lora"]
    assert rows["final loss"] == ["0.0833", "0.0833"]
    assert rows["q8_0"] == ["KLD 0.0020, ppl 3.110 (recommended)"] * 2
    assert page.index("train.learning_rate") < page.index("train.method")
    by_ids = user.page(f"/compare?ids={ids[1]}+{ids[0]}").text
    assert by_ids.index("lr-0.001") < by_ids.index("lr-0.0002")
    assert "Name a batch" in user.page("/compare").text


def test_tuneship_run_serves_the_console_beside_its_embedded_controller(tmp_path: Path) -> None:
    from contextlib import ExitStack

    from tuneship.cli.run import console_beside
    from tuneship.testing.cluster import start_cluster

    cluster = start_cluster(tmp_path, console_stages(), {})  # no tokens, as embedded
    try:
        with ExitStack() as stack:
            running = console_beside(cluster.controller.address, 0, stack)
            assert running.url.startswith("http://127.0.0.1:")
            page = httpx.get(running.url + "/", timeout=10)
            assert page.status_code == 200 and "Pipelines" in page.text
        with pytest.raises(httpx.TransportError):  # stopped with the run
            httpx.get(running.url + "/healthz", timeout=2)
    finally:
        cluster.stop()


def test_the_pipeline_page_lists_its_files_and_each_downloads_as_an_attachment(
    rig: Rig, user: ConsoleUser
) -> None:
    pid = submitted(user, "files")
    rig.cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    page = user.page(f"/pipelines/{pid}").text
    rows = re.findall(r'<tr><th scope="row"><a href="([^"]+)" download>([^<]+)</a></th>'
                      r'<td class="number">([^<]+)</td>', page)  # fmt: skip
    assert [(name, size) for _url, name, size in rows] == [
        ("train/adapter_model.safetensors", "293.0 KiB"), ("train/metrics.jsonl", "25 bytes"),
        ("merge/model.safetensors", "1.4 MiB"), ("export/pirate-q8_0.gguf", "2.2 MiB"),
        ("export/report.md", "39 bytes"), ("publish/Modelfile", "24 bytes"),
    ]  # fmt: skip
    assert "6 files, 3.9 MiB in all" in page
    groups = re.findall(r'<th scope="rowgroup">([^<]+)</th><td class="number">([^<]+)<', page)
    assert groups == [
        ("train: 2 files", "293.0 KiB"),
        ("merge: 1 file", "1.4 MiB"),
        ("export: 2 files", "2.2 MiB"),
        ("publish: 1 file", "24 bytes"),
    ]

    url = dict((name, url) for url, name, _size in rows)["export/pirate-q8_0.gguf"]
    got = user.http.get(url)
    assert got.status_code == 200
    assert got.content == FILES["export"]["pirate-q8_0.gguf"]
    assert got.headers["content-length"] == str(len(got.content))
    assert got.headers["content-disposition"].startswith('attachment; filename="pirate-q8_0.gguf"')
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in got.headers["content-security-policy"]

    missing = user.http.get(f"/pipelines/{pid}/files/export/export/..%2F..%2Fstate.db")
    assert missing.status_code == 404 and "has no file" in missing.text
    assert user.http.get(f"/pipelines/{pid}/files/deploy/deploy/x").status_code == 404
    assert httpx.get(rig.url + url, timeout=10).status_code == 401  # no session, no file


def test_an_interrupted_download_resumes_where_it_stopped(rig: Rig, user: ConsoleUser) -> None:
    pid = submitted(user, "resume")
    rig.cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    url = f"/pipelines/{pid}/files/export/export/pirate-q8_0.gguf"
    gguf = FILES["export"]["pirate-q8_0.gguf"]
    whole = user.http.get(url)
    etag = whole.headers["etag"]
    assert whole.headers["accept-ranges"] == "bytes"
    assert etag == f'"{hashlib.sha256(gguf).hexdigest()}"'

    # The browser kept 1.5 MB, then asks for the rest of the same file (If-Range).
    rest = user.http.get(url, headers={"Range": "bytes=1500000-", "If-Range": etag})
    assert rest.status_code == 206 and rest.content == gguf[1_500_000:]
    assert rest.headers["content-range"] == f"bytes 1500000-{len(gguf) - 1}/{len(gguf)}"
    assert rest.headers["content-length"] == str(len(gguf) - 1_500_000)
    middle = user.http.get(url, headers={"Range": "bytes=1048570-1048580"})  # across pieces
    assert middle.status_code == 206 and middle.content == gguf[1_048_570:1_048_581]
    # A file committed again since (another ETag) comes whole, from the start.
    changed = user.http.get(url, headers={"Range": "bytes=1500000-", "If-Range": '"old"'})
    assert changed.status_code == 200 and changed.content == gguf
    past = user.http.get(url, headers={"Range": f"bytes={len(gguf)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(gguf)}"
