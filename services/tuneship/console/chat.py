"""Chat with the model a pipeline published, through the controller's ``Chat``.

The conversation lives in the page (a hidden field of the form), not on the server.
Without JavaScript the form posts and the page comes back with the whole answer; the
script streams the answer instead, piece by piece, from ``/chat/stream``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web

from tuneship.common.errors import InvalidInput, TuneshipError
from tuneship.console.pages import call, render
from tuneship.console.sessions import Session
from tuneship.console.state import SESSION_KEY, STATE_KEY

MAX_TURNS = 40
"""Messages of a conversation the console sends (the oldest are dropped beyond it)."""
ROLES = ("user", "assistant")
OPTIONS = {"num_predict": 256.0}


def conversation(form: Any) -> list[dict[str, str]]:
    """The history the page sent plus its new user message.

    Raises ``InvalidInput`` for a history that is not a list of user/assistant turns or
    an empty message."""
    try:
        history = json.loads(str(form.get("history") or "[]"))
    except ValueError as exc:
        raise InvalidInput("the conversation is not JSON", where="history") from exc
    if not isinstance(history, list) or not all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
        for m in history
    ):
        raise InvalidInput("the conversation is not a list of turns", where="history")
    message = str(form.get("message") or "").strip()
    if not message:
        raise InvalidInput("type a message first", where="message")
    turns = [{"role": m["role"], "content": m["content"]} for m in history]
    return [*turns, {"role": "user", "content": message}][-MAX_TURNS:]


async def chat_page(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    pipeline_id = request.match_info["id"]
    info = await call(request, lambda c: c.get(pipeline_id))
    return render(state, request, "chat.html", info=info, history=[], problem="")


async def chat_answer(request: web.Request) -> web.Response:
    """The form without script: the whole answer, then the page again."""
    state = request.app[STATE_KEY]
    pipeline_id = request.match_info["id"]
    info = await call(request, lambda c: c.get(pipeline_id))
    form = await request.post()
    try:
        messages = conversation(form)
    except InvalidInput as exc:
        return render(state, request, "chat.html", 422, info=info, history=[],
                      problem=exc.message)  # fmt: skip
    try:
        answer = await call(request, lambda c: "".join(c.chat(pipeline_id, messages, **OPTIONS)))
    except web.HTTPBadGateway:
        return render(state, request, "chat.html", 502, info=info, history=messages[:-1],
                      problem="The model did not answer; is the pipeline published?")  # fmt: skip
    history = [*messages, {"role": "assistant", "content": answer}]
    return render(state, request, "chat.html", info=info, history=history, problem="")


async def chat_stream(request: web.Request) -> web.StreamResponse:
    """The answer as plain text, streamed as the model writes it."""
    pipeline_id = request.match_info["id"]
    form = await request.post()
    try:
        messages = conversation(form)
    except InvalidInput as exc:
        raise web.HTTPUnprocessableEntity(text=exc.message) from exc
    session: Session = request[SESSION_KEY]
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8",
                                           "Cache-Control": "no-store"})  # fmt: skip
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        def put(item: str | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        try:
            try:
                for piece in session.client.chat(pipeline_id, messages, **OPTIONS):
                    put(piece)
            except TuneshipError as exc:
                put(f"\n[no answer: {exc.message}]")
            put(None)
        except RuntimeError:  # the loop closed: nobody reads
            return

    threading.Thread(target=pump, name="console-chat", daemon=True).start()
    try:
        while (piece := await queue.get()) is not None:
            await response.write(piece.encode())
    except ConnectionError:
        pass
    return response


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/pipelines/{id}/chat", chat_page)
    router.add_post("/pipelines/{id}/chat", chat_answer)
    router.add_post("/pipelines/{id}/chat/stream", chat_stream)
