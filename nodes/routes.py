"""The editor's route to the workflow converter (ip_adapter_core.convert).

    GET  /ipadapter/convert/types   -> {"types": [their node ids]}
    POST /ipadapter/convert         {"workflow": {...}, "family": "auto"|"sd15"|"sdxl"}
                                    -> {"workflow": {...}, "report": {...}}

web/js/convert.js calls them when a loaded graph has ComfyUI_IPAdapter_plus nodes. The limits are
those of ip_adapter_core/convert/limits.py: a body other than application/json gets 415, one over
MAX_BYTES 413, an unreadable or malformed one (or a workflow over MAX_NODES) 400 with the reason, a
conversion that takes longer than TIME_LIMIT_S 503. Each refusal is logged on one line. Parsing,
converting and serialising run in a worker thread, so the server's other routes answer meanwhile.
"""
import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from ..ip_adapter_core.convert import THEIR_NODE_IDS, ConversionError, convert
from ..ip_adapter_core.convert.limits import MAX_BYTES, TIME_LIMIT_S

log = logging.getLogger("ipadapter.convert")
CONVERT, TYPES = "/ipadapter/convert", "/ipadapter/convert/types"
CHUNK = 1 << 16
# One conversion at a time, in a thread of its own: the GIL would serialise them anyway, and a slow one
# must not hold the default executor's threads, which ComfyUI uses too.
WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipadapter-convert")


class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


async def their_types(request: web.Request) -> web.Response:
    return web.json_response({"types": list(THEIR_NODE_IDS)})


async def _read(request: web.Request) -> bytes:
    """The body, refused before it is read when its declared length is over MAX_BYTES, and read with that
    cap when the length is not declared (chunked)."""
    if request.content_type != "application/json":
        raise Refused(415, f"expected Content-Type application/json, found {request.headers.get('Content-Type')!r}")
    if request.content_length is not None and request.content_length > MAX_BYTES:
        raise Refused(413, f"the request body has {request.content_length:,} bytes; at most {MAX_BYTES:,} are "
                           "converted (ip_adapter_core/convert/limits.py MAX_BYTES)")
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BYTES:
            raise Refused(413, f"the request body has more than {MAX_BYTES:,} bytes, the most that is converted "
                               "(ip_adapter_core/convert/limits.py MAX_BYTES)")
        chunks.append(chunk)


def convert_body(raw: bytes) -> str:
    """The whole job of one request, off the event loop: parse, convert, serialise (a 16 MiB workflow
    takes a noticeable part of a second to parse or to write). Raises Refused for the client's errors."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:   # RecursionError: arrays nested a thousand deep
        raise Refused(400, f"expected a JSON body {{\"workflow\": {{...}}}}; it could not be parsed: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("workflow"), dict):
        raise Refused(400, "expected a JSON object with a 'workflow' object")
    try:
        workflow, report = convert(body["workflow"], family=body.get("family") or "auto")
    except ConversionError as exc:
        raise Refused(400, str(exc)) from None
    log.info("IP-Adapter: %s", report.summary())
    return json.dumps({"workflow": workflow, "report": report.as_dict()})


async def convert_workflow(request: web.Request) -> web.Response:
    try:
        raw = await _read(request)
        # A thread cannot be stopped: past the limit the client gets its answer, and the conversion goes on
        # to its end in the background. That end comes, because the converter is bounded itself (linear
        # walks, MAX_NODES, MAX_PARAM_ENTRIES); the single worker keeps it to one at a time.
        job = asyncio.get_running_loop().run_in_executor(WORKER, convert_body, raw)
        try:
            text = await asyncio.wait_for(job, TIME_LIMIT_S)
        except asyncio.TimeoutError:
            raise Refused(503, f"the conversion took longer than {TIME_LIMIT_S:g} s (ip_adapter_core/convert/"
                               "limits.py TIME_LIMIT_S); try again, or convert the file with "
                               "scripts/convert_workflow.py") from None
    except Refused as exc:
        log.warning("IP-Adapter: conversion request from %r refused, %d: %r", request.remote, exc.status,
                    exc.reason)
        return web.json_response({"error": exc.reason}, status=exc.status)
    except Exception as exc:  # noqa: BLE001 - a converter bug must not reach the server loop
        log.exception("IP-Adapter: converting a workflow failed")
        return web.json_response({"error": f"the converter failed: {exc!r}; please report it"}, status=500)
    return web.Response(text=text, content_type="application/json")


def register() -> bool:
    """Add the routes to ComfyUI's server; False when there is no server (imported by a script)."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return False
    instance.routes.get(TYPES)(their_types)
    instance.routes.post(CONVERT)(convert_workflow)
    return True
