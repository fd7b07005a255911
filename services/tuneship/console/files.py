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


class RangeNotSatisfiable(Exception):
    """A ``Range`` that starts at or past the end of the file (answered with 416)."""


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(header: str, if_range: str, size: int, etag: str) -> tuple[int, int] | None:
    """The first and last byte one ``Range: bytes=...`` asks for, or None for the whole
    file: no Range, an ``If-Range`` other than this file's ETag (the file changed since
    the part the browser has), or a form this server ignores (several ranges, another
    unit, last before first), as RFC 9110 lets a server do. ``RangeNotSatisfiable``
    when the range starts past the end."""
    found = _RANGE.match(header.strip()) if header else None
    if found is None or (if_range and if_range.strip() != etag):
        return None
    first, last = found.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        if int(last) == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(size - int(last), 0), size - 1
    begin = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < begin:
        return None
    if begin >= size:
        raise RangeNotSatisfiable
    return begin, end


async def download(request: web.Request) -> web.StreamResponse:
    """One committed file, streamed as the controller reads it from the store; a
    ``Range`` (a browser resuming a download) gets that part only (206)."""
    pipeline_id = request.match_info["id"]
    stage, output, path = (request.match_info[k] for k in ("stage", "output", "path"))
    span = await _wanted_span(request, pipeline_id, stage, output, path)
    transfer: ArtifactDownload | None = None
    if span is not None and span[0] > 0:
        start, expected = span[0], span[2]
        transfer = await call(
            request, lambda c: c.read_artifact(pipeline_id, stage, path, output, start)
        )
        if transfer.file.sha256 != expected:  # committed again since it was listed
            transfer.cancel()
            transfer, span = None, None
    if transfer is None:
        transfer = await call(request, lambda c: c.read_artifact(pipeline_id, stage, path, output))
    return await _send(request, transfer, span[:2] if span is not None else None)


async def _wanted_span(
    request: web.Request, pipeline_id: str, stage: str, output: str, path: str
) -> tuple[int, int, str] | None:
    """The (first, last) bytes and the file's sha256 a ``Range`` asks for; None for the
    whole file. Raises 416 for a range past the end."""
    if not request.headers.get("Range"):
        return None
    listed = await call(request, lambda c: c.artifacts(pipeline_id))
    known = next((f for f in listed if (f.stage, f.output, f.path) == (stage, output, path)), None)
    if known is None:
        return None  # reading it says why there is no such file
    try:
        span = byte_range(request.headers["Range"], request.headers.get("If-Range", ""),
                          known.size, etag(known.sha256))  # fmt: skip
    except RangeNotSatisfiable:
        raise web.HTTPRequestRangeNotSatisfiable(
            headers={**DOWNLOAD_HEADERS, "Content-Range": f"bytes */{known.size}"}
        ) from None
    return (*span, known.sha256) if span is not None else None


def etag(sha256: str) -> str:
    return f'"{sha256}"'


async def _send(
    request: web.Request, transfer: ArtifactDownload, span: tuple[int, int] | None
) -> web.StreamResponse:
    size = transfer.file.size
    first, last = span if span is not None else (0, size - 1)
    headers = {**DOWNLOAD_HEADERS, "Content-Disposition": attachment(transfer.file.path),
               "Content-Length": str(last - first + 1), "Accept-Ranges": "bytes",
               "ETag": etag(transfer.file.sha256)}  # fmt: skip
    if span is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    response = web.StreamResponse(status=206 if span is not None else 200, headers=headers)
    pieces = iter(transfer)
    left = last - first + 1
    try:
        await response.prepare(request)
        while left > 0 and (piece := await asyncio.to_thread(next, pieces, None)) is not None:
            await response.write(piece[:left])
            left -= len(piece)
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
