"""Presets: the IP-Adapter and CLIP vision files for a common case, found by what they hold.

The popular extension's unified loader matches file names, so a renamed file is not found
and a misnamed one is loaded as the wrong kind. Here every file in the model folders is
classified by its tensors (model_folders.py) and a preset is a test on the resulting
AdapterConfig.

Two pairs of presets are the same network with different training, and no shape tells
them apart: LIGHT and STANDARD on SD1.5 (ip-adapter_sd15_light is ip-adapter_sd15 trained
to follow the text more), PLUS and PLUS FACE (plus-face is plus trained on face crops).
Each of those presets accepts either file. Only among such same-tensor candidates does the
file name count: LIGHT and PLUS FACE prefer a name with "light" / "face" in it, STANDARD and
PLUS one without (so with h94's four files installed each preset gets its own); then the
first by path. The log says which file was taken and why; the IP-Adapter Loader picks a
given file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import IPAdapterError
from .config import (FACEID, FACEID_PLUS, FAMILY_NAMES, KOLORS, PORTRAIT, PORTRAIT_UNNORM, VIT_BIGG, VIT_H, VIT_L_336,
                     AdapterConfig)
from .model_folders import CLIP_VISION, FOLDER, Skipped, folders, scan

log = logging.getLogger("ipadapter")

HF = "https://huggingface.co/h94/IP-Adapter/resolve/main/"
HF_FACEID = "https://huggingface.co/h94/IP-Adapter-FaceID/resolve/main/"
HF_COMPOSITION = "https://huggingface.co/ostris/ip-composition-adapter/resolve/main/"
HF_KOLORS = "https://huggingface.co/Kwai-Kolors/Kolors-IP-Adapter-Plus/resolve/main/"
SAME_TENSORS = ("{a} and {b} files have the same tensors (only the training differs), so {preset} "
                "takes either; to use a given file, load it with IP-Adapter Loader.")


@dataclass(frozen=True)
class Preset:
    name: str
    meaning: str                                # for the tooltip and the messages
    accepts: Callable[[AdapterConfig], bool]    # the test on the file's variant
    releases: dict[str, str]                    # family -> the h94/IP-Adapter file; absent: none
    twin: str = ""                              # why several files may fit (same tensors)
    # among same-tensor files only: (word or words, wanted) - prefer names with (or without any of) the word(s)
    name_hint: tuple | None = None
    hub: str = HF                               # where the releases are
    faceid_version: str = ""                    # FaceID Plus: "v2" / "v1", what the preset means
    base: str = ""                              # KOLORS: the preset is for Kolors UNets (and only it is)


def _linear(encoder):
    return lambda c: c.projection == "linear" and c.num_tokens == 4 and c.encoder == encoder


def _plus(c: AdapterConfig) -> bool:
    return c.projection == "resampler" and c.num_tokens == 16 and c.encoder == VIT_H


def _kolors_plus(c: AdapterConfig) -> bool:
    return c.base == KOLORS and c.projection == "resampler"


def _full_face(c: AdapterConfig) -> bool:
    return c.projection == "mlp" and c.num_tokens == 257 and c.encoder == VIT_H


PRESETS = {p.name: p for p in (
    Preset("LIGHT", "base adapter, ViT-H, 4 tokens, follows the text more (SD1.5 only)", _linear(VIT_H),
           {"sd15": "models/ip-adapter_sd15_light.safetensors"},
           SAME_TENSORS.format(a="Light", b="standard", preset="LIGHT"), ("light", True)),
    Preset("STANDARD", "base adapter, ViT-H, 4 tokens", _linear(VIT_H),
           {"sd15": "models/ip-adapter_sd15.safetensors", "sdxl": "sdxl_models/ip-adapter_sdxl_vit-h.safetensors"},
           SAME_TENSORS.format(a="Standard", b="light", preset="STANDARD"), ("light", False)),
    Preset("VIT-G", "base adapter, ViT-bigG, 4 tokens", _linear(VIT_BIGG),
           {"sd15": "models/ip-adapter_sd15_vit-G.safetensors", "sdxl": "sdxl_models/ip-adapter_sdxl.safetensors"}),
    Preset("PLUS", "plus adapter (Resampler), ViT-H, 16 tokens: closer to the image", _plus,
           {"sd15": "models/ip-adapter-plus_sd15.safetensors",
            "sdxl": "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors"},
           SAME_TENSORS.format(a="Plus", b="plus-face", preset="PLUS"), (("face", "composition"), False)),
    Preset("PLUS FACE", "plus adapter trained on faces (Resampler), ViT-H, 16 tokens", _plus,
           {"sd15": "models/ip-adapter-plus-face_sd15.safetensors",
            "sdxl": "sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors"},
           SAME_TENSORS.format(a="Plus-face", b="plus", preset="PLUS FACE"), ("face", True)),
    Preset("FULL FACE", "full-face adapter (MLP), ViT-H, 257 tokens: portraits (SD1.5 only)", _full_face,
           {"sd15": "models/ip-adapter-full-face_sd15.safetensors"}),
    # ostris' composition adapter is a plus adapter by its tensors: among plus files a name with "composition" wins
    Preset("COMPOSITION", "ostris' composition adapter (a plus adapter trained for layout), ViT-H, 16 tokens", _plus,
           {"sd15": "ip_plus_composition_sd15.safetensors", "sdxl": "ip_plus_composition_sdxl.safetensors"},
           "composition and plus files have the same tensors, so COMPOSITION takes a plus file when no name says "
           "'composition'; to use a given file, load it with IP-Adapter Loader.", ("composition", True),
           HF_COMPOSITION),
    Preset("KOLORS", "Kolors-IP-Adapter-Plus (Resampler), ViT-L/14-336, 16 tokens (Kolors only)", _kolors_plus,
           {"sdxl": "ip_adapter_plus_general.bin"}, hub=HF_KOLORS, base=KOLORS),
)}

def _face(kind):
    return lambda c: c.face == kind


PLUS_TWIN = ("plus and plusv2 files have the same tensors (only the training differs), so both presets take "
             "either; to use a given file, load it with IP-Adapter Loader and set faceid_version.")
# FaceID presets (IP-Adapter FaceID Preset Loader): the adapter, the CLIP vision model where it needs one, and a
# face pack (models/insightface). plus / plusv2 are told apart by the name only, among same-tensor files.
FACEID_PRESETS = {p.name: p for p in (
    Preset("FACEID", "FaceID: the face embedding, 4 tokens, with its LoRA", _face(FACEID),
           {"sd15": "ip-adapter-faceid_sd15.bin", "sdxl": "ip-adapter-faceid_sdxl.bin"}, hub=HF_FACEID),
    Preset("FACEID PLUS V2", "FaceID Plus v2: the face embedding and CLIP ViT-H of the face, with its LoRA",
           _face(FACEID_PLUS), {"sd15": "ip-adapter-faceid-plusv2_sd15.bin", "sdxl": "ip-adapter-faceid-plusv2_sdxl.bin"},
           PLUS_TWIN, ("plusv2", True), HF_FACEID, "v2"),
    Preset("FACEID PLUS", "FaceID Plus (v1, SD1.5 only; superseded by v2)", _face(FACEID_PLUS),
           {"sd15": "ip-adapter-faceid-plus_sd15.bin"}, PLUS_TWIN, ("plusv2", False), HF_FACEID, "v1"),
    Preset("FACEID PORTRAIT", "FaceID Portrait: several faces, 16 tokens each, no LoRA", _face(PORTRAIT),
           {"sd15": "ip-adapter-faceid-portrait-v11_sd15.bin", "sdxl": "ip-adapter-faceid-portrait_sdxl.bin"},
           hub=HF_FACEID),
    Preset("FACEID PORTRAIT UNNORM", "FaceID Portrait on the raw embedding (SDXL only, strong)",
           _face(PORTRAIT_UNNORM), {"sdxl": "ip-adapter-faceid-portrait_sdxl_unnorm.bin"}, hub=HF_FACEID),
)}

# encoder -> (h94/IP-Adapter file, the name README.md gives it in models/clip_vision)
ENCODER_RELEASES = {VIT_H: ("models/image_encoder/model.safetensors", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
                    VIT_BIGG: ("sdxl_models/image_encoder/model.safetensors",
                               "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"),
                    VIT_L_336: ("image_encoder/pytorch_model.bin", "clip-vit-large-patch14-336.bin")}
ENCODER_HUBS = {VIT_L_336: HF_KOLORS}  # where an encoder's release is, when not h94/IP-Adapter


@dataclass(frozen=True)
class PresetFiles:
    """What a preset resolved to: the adapter file, its variant, and the encoder file."""

    preset: str
    family: str
    adapter: str
    config: AdapterConfig
    clip_vision: str


# ---------------------------------------------------------------- choosing files

def preset_files(preset: str, family: str, base: str = "") -> PresetFiles:
    """The adapter and CLIP vision files for ``preset`` on a ``family`` ('sd15'/'sdxl') model of ``base`` (KOLORS
    for a Kolors UNet), chosen by their tensors; the first by path where several fit. Raises IPAdapterError."""
    p = PRESETS.get(preset) or FACEID_PRESETS.get(preset)
    if p is None:
        raise IPAdapterError(f"preset: unknown preset '{preset}'; expected one of "
                             f"{', '.join([*PRESETS, *FACEID_PRESETS])}.")
    if p.base != base:
        kolors = [n for n, q in PRESETS.items() if q.base == KOLORS]
        raise IPAdapterError(f"preset {p.name}: " + (
            f"this model is a Kolors UNet; the {p.name} adapters were trained for SDXL. For Kolors use {kolors[0]}."
            if base == KOLORS else f"{p.meaning}; this model is not a Kolors UNet. Load a Kolors model (MinusZone's "
            "Kolors nodes, ComfyUI-Kolors-MZ) or choose another preset."))
    fam = FAMILY_NAMES[family]
    if family not in p.releases:
        table = FACEID_PRESETS if p.name in FACEID_PRESETS else PRESETS
        others = [n for n, q in table.items() if family in q.releases]
        if not others:
            raise IPAdapterError(f"preset {p.name}: presets cover SD1.5 and SDXL; for {fam} load the adapter with "
                                 "IP-Adapter Loader (README.md, Models, lists the files).")
        raise IPAdapterError(f"preset {p.name}: there is no {fam} release of this preset ({p.meaning}). "
                             f"For {fam} use one of: {', '.join(others)}.")
    files = scan(FOLDER)
    fits = [(path, c) for path, c in files
            if isinstance(c, AdapterConfig) and c.family == family and c.base == base and p.accepts(c)]
    if not fits:
        raise IPAdapterError(_missing_adapter(p, family, files))
    order = "first by path" if p.name_hint is None else \
        f"a name {'with' if p.name_hint[1] else 'without'} " \
        f"{' or '.join(repr(w) for w in ((p.name_hint[0],) if isinstance(p.name_hint[0], str) else p.name_hint[0]))}" \
        " first, then by path"
    adapter, config = _pick(_by_name_hint(fits, p.name_hint), f"preset {p.name} ({fam}) adapter", p.twin, order)
    if config.clip_encoder is None:  # FaceID and Portrait read the face only
        log.info("preset %s (%s): %s (%s)", p.name, fam, adapter, config.name)
        return PresetFiles(p.name, family, adapter, config, "")
    encoders = scan(CLIP_VISION)
    found = [(path, e) for path, e in encoders if e == config.clip_encoder]
    if not found:
        raise IPAdapterError(_missing_encoder(p, fam, adapter, config, encoders))
    clip_vision, _ = _pick(found, f"preset {p.name} ({fam}) CLIP vision ({config.clip_encoder})")
    log.info("preset %s (%s): %s (%s) with CLIP vision %s", p.name, fam, adapter, config.name, clip_vision)
    return PresetFiles(p.name, family, adapter, config, clip_vision)


def _by_name_hint(fits: list, hint: tuple[str, bool] | None) -> list:
    """Same-tensor candidates with the preset's word in their file name (or without it, as the preset
    wants) first, each group still by path; a file of another kind never got here (tensors decide)."""
    if hint is None or len(fits) < 2:
        return fits
    words, wanted = hint
    words = (words,) if isinstance(words, str) else words

    def named(f):
        return any(w in Path(f[0]).name.lower() for w in words)

    return sorted(fits, key=lambda f: named(f) != wanted)  # stable: by path within


def _pick(fits: list, what: str, twin: str = "", order: str = "first by path"):
    """The first of ``fits`` (in ``order``), saying which when there was a choice."""
    if len(fits) > 1:
        log.info("%s: %d files fit, using %s (%s); also fit: %s.%s", what, len(fits), fits[0][0], order,
                 ", ".join(path for path, _ in fits[1:]), f" {twin}" if twin else "")
    return fits[0]


def _listing(files, limit: int = 6) -> str:
    """What each file found is, for a message: 'name: SD1.5 plus (...)' or 'name: skipped (why)'."""
    if not files:
        return "the folders hold no model files"
    items = [f"{Path(path).name}: "
             + (f"not used ({r.reason})" if isinstance(r, Skipped) else getattr(r, "name", r))
             for path, r in files[:limit]]
    more = f"; and {len(files) - limit} more" if len(files) > limit else ""
    return "; ".join(items) + more


def _searched(kind: str) -> str:
    return ", ".join(folders(kind)) or f"none: no '{kind}' folder is registered"


def _missing_adapter(p: Preset, family: str, files) -> str:
    fam, release = FAMILY_NAMES[family], p.releases[family]
    return (f"preset {p.name}: no {fam} IP-Adapter of this kind ({p.meaning}) found in models/{FOLDER} "
            f"(searched: {_searched(FOLDER)}). Download {Path(release).name} from Hugging Face "
            f"{p.hub.split('.co/')[1].split('/resolve')[0]} ({p.hub}{release}) and put it in one of those folders; any file name works, files are recognised "
            f"by their tensors. Found: {_listing(files)}.")


def _missing_encoder(p: Preset, fam: str, adapter: str, config: AdapterConfig, files) -> str:
    release, name = ENCODER_RELEASES[config.clip_encoder]
    hub = ENCODER_HUBS.get(config.clip_encoder, HF)
    return (f"preset {p.name} ({fam}): the adapter {Path(adapter).name} ({config.name}) needs the "
            f"{config.clip_encoder} CLIP vision model; none found in models/{CLIP_VISION} (searched: "
            f"{_searched(CLIP_VISION)}). Download {release} from Hugging Face "
            f"{hub.split('.co/')[1].split('/resolve')[0]} ({hub}{release}) and save it in one of those folders as "
            f"{name} (any name works). Found: {_listing(files)}.")
