"""The console's pages and endpoints (the routes ``add_routes`` adds)."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from tuneship.client import PipelineClient, PipelineInfo, WatchEvent
from tuneship.common.errors import InvalidInput, NotFound, TuneshipError
from tuneship.console import views
from tuneship.console.charts import loss_chart, quality_chart, timeline_chart
from tuneship.console.sessions import COOKIE, LOGIN_COOKIE, Session
from tuneship.console.state import SESSION_KEY, STATE_KEY, ConsoleState, set_session_cookie

T = TypeVar("T")
ACTIONS = {
    "cancel": "Cancel: its running stage is stopped on the worker.",
    "retry": "Retry from the stage that did not finish; finished stages are kept.",
    "delete": "Delete: the controller forgets the pipeline and its events.",
}
LIST_LIMIT = 500
"""The most pipelines the list page reads (pages of 100) to filter and group."""
KEEPALIVE_S = 15.0
REFUSED_DELAY_S = 0.5
"""A refused login answers this much later: guessing tokens through the form is slow."""


def render(state: ConsoleState, request: web.Request, name: str, status: int = 200,
           **context: Any) -> web.Response:  # fmt: skip
    session: Session | None = request.get(SESSION_KEY)
    page = state.templates.get_template(name).render(
        csrf=session.csrf if session is not None else "",
        logged_in=session is not None and state.open_mode is not True,
        path=request.path, **context,
    )  # fmt: skip
    return web.Response(text=page, status=status, content_type="text/html")


def unauthorized(state: ConsoleState, request: web.Request) -> web.HTTPException:
    """The 401 page to raise: no session."""
    return _page(state, request, "denied.html", 401, title="Log in first",
                 reason="This page needs a session: log in with your API token.")  # fmt: skip


def forbidden(state: ConsoleState, request: web.Request) -> web.HTTPException:
    """The 403 page to raise: a form without this session's CSRF token."""
    return _page(state, request, "denied.html", 403, title="Refused",
                 reason="The form was not sent from this console (no valid CSRF token). "
                 "Reload the page and try again.")  # fmt: skip


async def call(request: web.Request, work: Callable[[PipelineClient], T]) -> T:
    """``work(client)`` on a thread, with this session's client. A token the controller
    no longer takes ends the session (401); a missing pipeline is 404; any other
    error of the controller is 502 with its message."""
    state = request.app[STATE_KEY]
    session: Session = request[SESSION_KEY]
    try:
        return await asyncio.to_thread(work, session.client)
    except NotFound as exc:
        raise _page(state, request, "error.html", 404, title="Not found", error=exc) from exc
    except TuneshipError as exc:
        if views.refused(exc):
            state.sessions.end(request.cookies.get(COOKIE))
            raise _page(state, request, "denied.html", 401, title="Log in again",
                        reason="The controller no longer takes your token.") from exc  # fmt: skip
        raise _page(state, request, "error.html", 502, title="The controller refused",
                    error=exc) from exc  # fmt: skip


_STATUS: dict[int, type[web.HTTPException]] = {
    401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
    502: web.HTTPBadGateway,
}  # fmt: skip


def _page(state: ConsoleState, request: web.Request, name: str, status: int,
          **context: Any) -> web.HTTPException:  # fmt: skip
    """An error page to raise, with ``status``."""
    page = render(state, request, name, status, **context)
    return _STATUS[status](text=page.text, content_type="text/html")


# ---- login -------------------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    nonce = secrets.token_urlsafe(24)
    response = render(state, request, "login.html", nonce=nonce, error="")
    response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path="/login",
                        secure=state.settings.secure_cookie)  # fmt: skip
    return response


async def login(request: web.Request) -> web.StreamResponse:
    """Check the token by listing one pipeline with it; a session on success."""
    state = request.app[STATE_KEY]
    form = await request.post()
    nonce = str(form.get("nonce") or "")
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not secrets.compare_digest(nonce, expected):
        raise forbidden(state, request)
    token = str(form.get("token") or "").strip()
    error = ""
    if not token:
        error = "Enter the API token."
    else:
        client = state.connect(token)
        try:
            await asyncio.to_thread(client.list, page_size=1)
        except TuneshipError as exc:
            client.close()
            if views.refused(exc):
                await asyncio.sleep(REFUSED_DELAY_S)
            error = "The controller refused this token." if views.refused(exc) else (
                f"The controller did not answer: {exc.message}")  # fmt: skip
        else:
            state.sessions.end(request.cookies.get(COOKIE))
            session_id, _ = state.sessions.create(client)
            response = web.HTTPSeeOther("/")
            set_session_cookie(state, response, session_id)
            response.del_cookie(LOGIN_COOKIE, path="/login")
            raise response
    return render(state, request, "login.html", 401, nonce=nonce, error=error)


async def logout(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    state.sessions.end(request.cookies.get(COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


# ---- pipelines ---------------------------------------------------------------------


def _filters(request: web.Request) -> tuple[str, str, str]:
    phase = request.query.get("phase", "")
    if phase not in views.PHASES:
        phase = ""
    return phase, request.query.get("labels", ""), request.query.get("q", "")


def _listing(client: PipelineClient, phase: str, labels: dict[str, str], query: str
             ) -> tuple[list[PipelineInfo], bool]:  # fmt: skip
    """Up to ``LIST_LIMIT`` pipelines with ``phase`` and ``labels`` that ``query`` finds,
    newest first, and whether there were more than it read."""
    found: list[PipelineInfo] = []
    token, read = "", 0
    while read < LIST_LIMIT:
        page, token = client.list(phase, page_size=100, page_token=token, labels=labels)
        read += len(page)
        found.extend(p for p in page if views.matches(p, query))
        if not token:
            return found, False
    return found, True


async def _list_context(request: web.Request) -> dict[str, Any]:
    phase, label_text, query = _filters(request)
    try:
        labels = views.parse_labels(label_text)
    except InvalidInput as exc:
        return {"groups": [], "truncated": False, "problem": exc.message, "phase": phase,
                "labels": label_text, "q": query}  # fmt: skip
    pipelines, truncated = await call(request, lambda c: _listing(c, phase, labels, query))
    return {
        "groups": views.by_batch(pipelines), "truncated": truncated, "problem": "",
        "phase": phase, "labels": label_text, "q": query, "count": len(pipelines),
    }  # fmt: skip


async def pipelines_page(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    context = await _list_context(request)
    return render(state, request, "pipelines.html", phases=views.PHASES,
                  refresh_ms=int(state.settings.refresh_s * 1000), now=views.when(time.time()),
                  **_helpers(), **context)  # fmt: skip


async def pipelines_rows(request: web.Request) -> web.Response:
    """The table of the list page alone (what its auto-refresh fetches)."""
    state = request.app[STATE_KEY]
    context = await _list_context(request)
    return render(state, request, "pipeline_rows.html", now=views.when(time.time()),
                  **_helpers(), **context)  # fmt: skip


def _helpers() -> dict[str, Any]:
    return {"when": views.when, "current_stage": views.current_stage,
            "duration": views.duration}  # fmt: skip


def recorded_events(client: PipelineClient, pipeline_id: str, quiet_s: float = 0.3,
                    limit_s: float = 1.0) -> list[WatchEvent]:  # fmt: skip
    """The events recorded so far: a Watch read until it ends (a finished pipeline),
    goes ``quiet_s`` without an event, or ``limit_s`` passed."""
    stream = client.watch(pipeline_id)
    collected: list[WatchEvent] = []
    last = [time.monotonic()]
    done = threading.Event()

    def read() -> None:
        try:
            for event in stream:
                collected.append(event)
                last[0] = time.monotonic()
        except TuneshipError:
            pass
        finally:
            done.set()

    threading.Thread(target=read, name="console-replay", daemon=True).start()
    deadline = time.monotonic() + limit_s
    while not done.wait(0.05):
        now = time.monotonic()
        if now - last[0] > quiet_s or now > deadline:
            break
    stream.cancel()
    return list(collected)


async def _pipeline_context(request: web.Request) -> dict[str, Any]:
    pipeline_id = request.match_info["id"]

    def read(client: PipelineClient) -> tuple[PipelineInfo, list[WatchEvent], views.Listing]:
        info = client.get(pipeline_id)
        return info, recorded_events(client, pipeline_id), views.file_listing(client, info.id)

    info, events, files = await call(request, read)
    rows, recommended = views.quality_report(info)
    curves = views.loss_points(events)
    chart = loss_chart(curves, title=f"Training loss of {info.name}")
    quality = quality_chart(rows, title=f"Size and KLD per quant type of {info.name}")
    return {"info": info, "rows": rows, "recommended": recommended, "chart": chart,
            "eval_curve": bool(curves["eval_loss"]), "held_out": views.held_out_loss(info),
            "quality": quality, "timeline": timeline_chart(info.stages, time.time()),
            "ended": info.phase in views.ENDED, "files": files, **_helpers()}  # fmt: skip


async def pipeline_page(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return render(state, request, "pipeline.html", **await _pipeline_context(request))


async def pipeline_live(request: web.Request) -> web.Response:
    """The parts of the pipeline page that change (what its live view fetches)."""
    state = request.app[STATE_KEY]
    return render(state, request, "pipeline_live.html", **await _pipeline_context(request))


async def pipeline_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events from the controller's Watch: every event after ``after``
    (or the ``Last-Event-ID`` of a reconnecting browser), then live ones; ``end`` when
    the pipeline ended, ``failure`` when the controller broke off."""
    session: Session = request[SESSION_KEY]
    pipeline_id = request.match_info["id"]
    after_text = request.headers.get("Last-Event-ID") or request.query.get("after", "0")
    after = int(after_text) if after_text.isdigit() else 0
    await call(request, lambda c: c.get(pipeline_id))  # 404 / 401 before the stream starts
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store"})  # fmt: skip
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stream = session.client.watch(pipeline_id, after)

    def put(item: tuple[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop closed: nobody is reading
            stream.cancel()

    def pump() -> None:
        try:
            for event in stream:
                put(("pipeline", event))
            put(("end", None))
        except TuneshipError as exc:
            put(("failure", exc.message))

    threading.Thread(target=pump, name="console-watch", daemon=True).start()
    try:
        while True:
            try:
                kind, item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if kind == "pipeline":
                data = json.dumps(views.event_record(item))
                await response.write(f"id: {item.seq}\nevent: pipeline\ndata: {data}\n\n".encode())
                continue
            await response.write(f"event: {kind}\ndata: {json.dumps(item or '')}\n\n".encode())
            break
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        stream.cancel()
    return response


async def confirm_page(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise web.HTTPNotFound()
    pipeline_id = request.match_info["id"]
    info = await call(request, lambda c: c.get(pipeline_id))
    return render(state, request, "confirm.html", info=info, action=action,
                  explain=ACTIONS[action])  # fmt: skip


async def act(request: web.Request) -> web.StreamResponse:
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise web.HTTPNotFound()
    pipeline_id = request.match_info["id"]
    await call(request, lambda c: getattr(c, action)(pipeline_id))
    raise web.HTTPSeeOther("/" if action == "delete" else f"/pipelines/{pipeline_id}")


# ---- submit ------------------------------------------------------------------------


async def submit_page(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return render(state, request, "submit.html", text="", check=None, error="", priority=0)


async def submit(request: web.Request) -> web.StreamResponse:
    """Check the spec as Submit does; show its problems on their lines, else submit."""
    state = request.app[STATE_KEY]
    form = await request.post()
    upload = form.get("file")
    text = str(form.get("spec") or "")
    if isinstance(upload, web.FileField) and upload.filename:
        text = upload.file.read().decode("utf-8", errors="replace")
    priority_text = str(form.get("priority") or "0").strip()
    priority = int(priority_text) if priority_text.lstrip("-").isdigit() else 0
    check = views.check_spec(text)
    if not check.ok:
        return render(state, request, "submit.html", 422, text=text, check=check, error="",
                      priority=priority)  # fmt: skip
    session: Session = request[SESSION_KEY]
    try:
        info = await asyncio.to_thread(session.client.submit, text, priority)
    except TuneshipError as exc:
        if views.refused(exc):
            state.sessions.end(request.cookies.get(COOKIE))
            raise _page(state, request, "denied.html", 401, title="Log in again",
                        reason="The controller no longer takes your token.") from exc  # fmt: skip
        problems = views.controller_problems(exc.message)
        annotated = views.spec_lines(text, problems) if problems else None
        return render(state, request, "submit.html", 422, text=text, check=annotated,
                      error="" if problems else exc.render(), priority=priority)  # fmt: skip
    raise web.HTTPSeeOther(f"/pipelines/{info.id}")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/healthz", healthz)
    router.add_get("/login", login_form)
    router.add_post("/login", login)
    router.add_post("/logout", logout)
    router.add_get("/", pipelines_page)
    router.add_get("/pipelines/rows", pipelines_rows)
    router.add_get("/submit", submit_page)
    router.add_post("/submit", submit)
    router.add_get("/pipelines/{id}", pipeline_page)
    router.add_get("/pipelines/{id}/live", pipeline_live)
    router.add_get("/pipelines/{id}/events", pipeline_events)
    router.add_get("/pipelines/{id}/confirm/{action:cancel|retry|delete}", confirm_page)
    router.add_post("/pipelines/{id}/{action:cancel|retry|delete}", act)
