"""The node schemas of the two Flux IP-Adapter packs whose workflows convert, as data (facts, not code), in the
shape of plus_nodes.py:

- XLabs-AI/x-flux-comfyui (nodes.py, last commit 2024-10-30): Load Flux IPAdatper, Apply Flux IPAdapter, Apply
  Advanced Flux IPAdapter. Their loader's first widget is spelled ``ipadatper`` there.
- Shakker-Labs/ComfyUI-IPAdapter-Flux at eef22b6 (ipadapter_flux.py, ipadapter_flux_advanced.py): InstantX's
  loader and apply nodes, plain and advanced.

Their samplers (XLabs Sampler) are not IP-Adapter nodes: they stay, and the report names them (flux_rules.py).
"""
from __future__ import annotations

from .plus_nodes import Schema, Widget

XLABS_PACK, SHAKKER_PACK = "x-flux-comfyui", "ComfyUI-IPAdapter-Flux"
SMOOTHING = ("Linear", "First half", "Second half", "Sigmoid")

FLUX_NODES = {
    "LoadFluxIPAdapter": Schema(
        sockets=(),
        widgets=(Widget("ipadatper", None, None), Widget("clip_vision", None, None),
                 Widget("provider", "CPU", ("CPU", "GPU"))),
        outputs=(("ipadapterFlux", "IP_ADAPTER_FLUX"),)),
    "ApplyFluxIPAdapter": Schema(
        sockets=(("model", "MODEL"), ("ip_adapter_flux", "IP_ADAPTER_FLUX"), ("image", "IMAGE")),
        widgets=(Widget("ip_scale", 0.93, None),),
        outputs=(("MODEL", "MODEL"),)),
    "ApplyAdvancedFluxIPAdapter": Schema(
        sockets=(("model", "MODEL"), ("ip_adapter_flux", "IP_ADAPTER_FLUX"), ("image", "IMAGE")),
        widgets=(Widget("begin_strength", 0.0, None), Widget("end_strength", 1.0, None),
                 Widget("smothing_type", "Linear", SMOOTHING)),
        outputs=(("MODEL", "MODEL"),)),
    "IPAdapterFluxLoader": Schema(
        sockets=(),
        widgets=(Widget("ipadapter", None, None),
                 Widget("clip_vision", "google/siglip-so400m-patch14-384", ("google/siglip-so400m-patch14-384",)),
                 Widget("provider", "cuda", ("cuda", "cpu", "mps"))),
        outputs=(("ipadapterFlux", "IP_ADAPTER_FLUX_INSTANTX"),)),
    "ApplyIPAdapterFlux": Schema(
        sockets=(("model", "MODEL"), ("ipadapter_flux", "IP_ADAPTER_FLUX_INSTANTX"), ("image", "IMAGE")),
        widgets=(Widget("weight", 1.0, None), Widget("start_percent", 0.0, None), Widget("end_percent", 1.0, None)),
        outputs=(("MODEL", "MODEL"),)),
}
FLUX_NODES["IPAdapterFluxLoaderAdvanced"] = FLUX_NODES["IPAdapterFluxLoader"]
FLUX_NODES["ApplyIPAdapterFluxAdvanced"] = Schema(
    sockets=(("model", "MODEL"), ("ipadapter_flux", "IP_ADAPTER_FLUX_INSTANTX"), ("image", "IMAGE")),
    widgets=(Widget("weight_start", 0.0, None), Widget("weight_end", 1.0, None), Widget("steps", 10, None),
             Widget("start_percent", 0.0, None), Widget("end_percent", 1.0, None)),
    outputs=(("MODEL", "MODEL"),))

PACK_OF = {kind: XLABS_PACK if kind in ("LoadFluxIPAdapter", "ApplyFluxIPAdapter", "ApplyAdvancedFluxIPAdapter")
           else SHAKKER_PACK for kind in FLUX_NODES}
# Nodes of those packs that run Flux their own way: they stay, and a converted image prompt does not reach them.
OWN_SAMPLERS = {"XlabsSampler": XLABS_PACK}
