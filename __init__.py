"""IP-Adapter for ComfyUI: an image as a prompt in SD1.5 and SDXL.

ComfyUI imports this package from custom_nodes/ and calls ``comfy_entrypoint``.
"""
import logging

log = logging.getLogger("ipadapter")

try:
    from comfy_api.latest import ComfyExtension  # noqa: F401  (V3 node API, ComfyUI >= 0.3.60)
except ImportError:  # pragma: no cover - depends on the host version
    log.error("IP-Adapter nodes need ComfyUI 0.8 or newer (comfy_api.latest is missing): update ComfyUI.")
    raise

from .ip_adapter_core.faces.packs import register_folder as register_face_folder
from .ip_adapter_core.files.loader import register_model_folder
from .ip_adapter_core.package_info import version
from .nodes import IPAdapterExtension
from .nodes.routes import register as register_routes

register_model_folder()
register_face_folder()  # models/insightface: the FaceID face packs
register_routes()  # the editor's converter for ComfyUI_IPAdapter_plus workflows (web/js/convert.js)
log.info("IP-Adapter nodes %s", version())

# The frontend loads web/js/*.js and reads node documentation from <WEB_DIRECTORY>/docs/<NodeId>.md (and <NodeId>/<locale>.md);
# translations come from locales/<lang>/ next to this file, found by ComfyUI's custom node manager.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint() -> IPAdapterExtension:
    return IPAdapterExtension()
