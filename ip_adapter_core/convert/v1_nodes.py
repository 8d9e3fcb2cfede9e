"""The node schemas of ComfyUI_IPAdapter_plus's first generation (Sept 2023 - Feb 2024), as data.

Read from its ``IPAdapterPlus.py`` at commit 6a411dc (13 Feb 2024, the last before the March 2024 rewrite,
643cb81, after which the extension no longer opens these workflows), with every earlier revision of the file
checked for the order its widgets were added in: each was appended after the ones before it (IPAdapterApply:
weight; noise; weight_type; start_at, end_at; unfold_batch), so a file saved by an older release stores a prefix
of these widgets and the converter fills the rest with the defaults, as for the current ids.

Two ids changed meaning in the rewrite and are told apart by what the file stores, not by guessing:
- ``IPAdapterEncoder``: the first generation's takes ``clip_vision`` and ``image_1`` (``image`` before
  12 Oct 2023) and stores a boolean first (``ipadapter_plus``, earlier ``plus``), then noise and weights; the
  current one takes ``ipadapter`` and ``image`` and stores one number (weight). ``first_generation`` decides.
- ``IPAdapterApply`` of 3-15 Sept 2023 took a CLIP_VISION_OUTPUT (``clip_vision_output``) and a ``mask``
  instead of the encoder and image; those sockets are listed here too (the rule uses whichever is linked).
``IPAdapterModelLoader``, ``PrepImageForClipVision`` (older files: fewer widgets, lower-case filter names),
``IPAdapterSaveEmbeds`` and ``IPAdapterLoadEmbeds`` kept their ids, sockets and widgets; only what an EMBEDS
wire carries changed (first generation: positive and negative features stacked), which the rules handle.
"""
from __future__ import annotations

from .plus_nodes import Schema, Widget

V1_WEIGHT_TYPES = ("original", "linear", "channel penalty")
V1_ENCODER = "IPAdapterEncoder (first generation)"   # the converter's key; the files say IPAdapterEncoder

_APPLY_WIDGETS = (
    Widget("weight", 1.0, None),
    Widget("noise", 0.0, None),
    Widget("weight_type", "original", V1_WEIGHT_TYPES),
    Widget("start_at", 0.0, None),
    Widget("end_at", 1.0, None),
    Widget("unfold_batch", False, None),
)

V1_NODES = {
    "IPAdapterApply": Schema(
        sockets=(("ipadapter", "IPADAPTER"), ("clip_vision", "CLIP_VISION"), ("image", "IMAGE"), ("model", "MODEL"),
                 ("attn_mask", "MASK"), ("clip_vision_output", "CLIP_VISION_OUTPUT")),
        widgets=_APPLY_WIDGETS,
        outputs=(("MODEL", "MODEL"),)),
    "IPAdapterApplyEncoded": Schema(
        sockets=(("ipadapter", "IPADAPTER"), ("embeds", "EMBEDS"), ("model", "MODEL"), ("attn_mask", "MASK")),
        widgets=(Widget("weight", 1.0, None), Widget("weight_type", "original", V1_WEIGHT_TYPES),
                 Widget("start_at", 0.0, None), Widget("end_at", 1.0, None), Widget("unfold_batch", False, None)),
        outputs=(("MODEL", "MODEL"),)),
    "IPAdapterApplyFaceID": Schema(
        sockets=(("ipadapter", "IPADAPTER"), ("clip_vision", "CLIP_VISION"), ("insightface", "INSIGHTFACE"),
                 ("image", "IMAGE"), ("model", "MODEL"), ("attn_mask", "MASK")),
        widgets=(Widget("weight", 1.0, None), Widget("noise", 0.0, None),
                 Widget("weight_type", "original", V1_WEIGHT_TYPES), Widget("start_at", 0.0, None),
                 Widget("end_at", 1.0, None), Widget("faceid_v2", False, None), Widget("weight_v2", 1.0, None),
                 Widget("unfold_batch", False, None)),
        outputs=(("MODEL", "MODEL"),)),
    "IPAdapterTilesMasked": Schema(
        sockets=(("ipadapter", "IPADAPTER"), ("clip_vision", "CLIP_VISION"), ("image", "IMAGE"), ("model", "MODEL")),
        widgets=(Widget("weight", 0.7, None), Widget("noise", 0.0, None),
                 Widget("weight_type", "original", V1_WEIGHT_TYPES), Widget("start_at", 0.0, None),
                 Widget("end_at", 1.0, None), Widget("short_side_tiles", 1, None), Widget("tile_weight", 0.6, None)),
        outputs=(("MODEL", "MODEL"),)),
    "InsightFaceLoader": Schema(
        sockets=(),
        widgets=(Widget("provider", "CPU", ("CPU", "CUDA", "ROCM")),),
        outputs=(("INSIGHTFACE", "INSIGHTFACE"),)),
    "PrepImageForInsightFace": Schema(
        sockets=(("image", "IMAGE"),),
        widgets=(Widget("crop_position", "center", ("center", "top", "bottom", "left", "right")),
                 Widget("sharpening", 0.0, None), Widget("pad_around", True, None)),
        outputs=(("IMAGE", "IMAGE"),)),
    "IPAdapterCLIPVisionEncode": Schema(     # 7-15 Sept 2023 only (commits 034fb6b to 1cbe9c8)
        sockets=(("clip_vision", "CLIP_VISION"), ("image", "IMAGE")),
        widgets=(),
        outputs=(("CLIP_VISION_OUTPUT", "CLIP_VISION_OUTPUT"),)),
    "IPAdapterBatchEmbeds": Schema(
        sockets=(("embed1", "EMBEDS"), ("embed2", "EMBEDS")),
        widgets=(),
        outputs=(("EMBEDS", "EMBEDS"),)),
    V1_ENCODER: Schema(
        sockets=(("clip_vision", "CLIP_VISION"), ("image_1", "IMAGE"), ("image_2", "IMAGE"), ("image_3", "IMAGE"),
                 ("image_4", "IMAGE")),
        widgets=(Widget("ipadapter_plus", False, None), Widget("noise", 0.0, None), Widget("weight_1", 1.0, None),
                 Widget("weight_2", 1.0, None), Widget("weight_3", 1.0, None), Widget("weight_4", 1.0, None)),
        outputs=(("EMBEDS", "EMBEDS"),)),
}
# Socket and widget names of older revisions -> the last ones (before 12 Oct 2023 the encoder had one ``image`` and
# a ``plus`` switch; in September 2023 IPAdapterApply's mask input was ``mask``).
NAME_ALIASES = {V1_ENCODER: {"image": "image_1", "plus": "ipadapter_plus"}, "IPAdapterApply": {"mask": "attn_mask"}}
# The first generation's file name for an id the converter keys differently.
FILE_ID = {V1_ENCODER: "IPAdapterEncoder"}


def first_generation(kind: str, input_names, values) -> str:
    """The schema key for a node of id ``kind``: V1_ENCODER for a first-generation IPAdapterEncoder, told by its
    sockets (clip_vision and an image, no ipadapter) or, failing those, by a boolean first widget value (the
    current encoder's first and only value is its weight, a number); else ``kind``. ``input_names``: the socket
    and widget names the file lists for the node; ``values``: its stored widget values (list or dict)."""
    if kind != "IPAdapterEncoder":
        return kind
    names = set(input_names)
    if "ipadapter" in names or "weight" in names:
        return kind
    if names & {"image_1", "ipadapter_plus", "plus", "noise"}:
        return V1_ENCODER
    first = values[0] if isinstance(values, (list, tuple)) and values else None
    return V1_ENCODER if isinstance(first, bool) else kind
