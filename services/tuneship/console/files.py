"""A pipeline's committed files, downloaded through the controller.

The console never reads the store: the listing (``views.file_listing``) is the
controller's ``ListArtifacts``, and a download streams ``ReadArtifact`` to the browser a
piece at a time (a GGUF of several GB is never held whole), as an attachment, never
rendered as a page.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import PurePosixPath
from urllib.parse import quote

from aiohttp import web

from tuneship.client import ArtifactDownload
from tuneship.common.errors import TuneshipError
from tuneship.console.pages import call

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
DOWNLOAD_HEADERS = {
    "Content-Type": "application/octet-stream",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def attachment(path: str) -> str:
    """The ``Content-Disposition`` of a download: the file's own name, ASCII-safe, and
    its exact name for browsers that read RFC 5987."""
    name = PurePosixPath(path).name or "download"
    return f"attachment; filename=\"{_UNSAFE.sub('_', name)}\"; filename*=UTF-8''{quote(name)}"


async def download(request: web.Request) -> web.StreamResponse:
    """One committed file, streamed as the controller reads it from the store."""
    pipeline_id = request.match_info["id"]
    stage, output, path = (request.match_info[k] for k in ("stage", "output", "path"))
    transfer: ArtifactDownload = await call(
        request, lambda c: c.read_artifact(pipeline_id, stage, path, output)
    )
    response = web.StreamResponse(headers={
        **DOWNLOAD_HEADERS, "Content-Disposition": attachment(path),
        "Content-Length": str(transfer.file.size),
    })  # fmt: skip
    pieces = iter(transfer)
    try:
        await response.prepare(request)
        while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
            await response.write(piece)
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass  # the browser went away: stop reading
    except TuneshipError:
        # The copy did not match its manifest (or the store went away) after bytes went
        # out: closing short of Content-Length tells the browser the download failed.
        if request.transport is not None:
            request.transport.close()
    finally:
        transfer.cancel()
    return response


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/pipelines/{id}/files/{stage}/{output}/{path:.+}", download)
