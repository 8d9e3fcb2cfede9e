"""The editor's route to the workflow converter (ip_adapter_core.convert).

    GET  /ipadapter/convert/types   -> {"types": [their node ids]}
    POST /ipadapter/convert         {"workflow": {...}, "family": "auto"|"sd15"|"sdxl"}
                                    -> {"workflow": {...}, "report": {...}}

web/js/convert.js calls them when a loaded graph has ComfyUI_IPAdapter_plus nodes. A request the
converter cannot read gets a 400 with the reason; nothing here can take the server down.
"""
import logging

from aiohttp import web

from ..ip_adapter_core.convert import THEIR_NODE_IDS, ConversionError, convert

log = logging.getLogger("ipadapter.convert")
CONVERT, TYPES = "/ipadapter/convert", "/ipadapter/convert/types"


async def their_types(request: web.Request) -> web.Response:
    return web.json_response({"types": list(THEIR_NODE_IDS)})


async def convert_workflow(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except Exception:  # noqa: BLE001 - any unreadable body is the client's error
        return web.json_response({"error": "expected a JSON body {\"workflow\": {...}}"}, status=400)
    if not isinstance(body, dict) or not isinstance(body.get("workflow"), dict):
        return web.json_response({"error": "expected a JSON object with a 'workflow' object"}, status=400)
    try:
        workflow, report = convert(body["workflow"], family=body.get("family") or "auto")
    except ConversionError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    except Exception as exc:  # noqa: BLE001 - a converter bug must not reach the server loop
        log.exception("IP-Adapter: converting a workflow failed")
        return web.json_response({"error": f"the converter failed: {exc!r}; please report it"}, status=500)
    log.info("IP-Adapter: %s", report.summary())
    return web.json_response({"workflow": workflow, "report": report.as_dict()})


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
