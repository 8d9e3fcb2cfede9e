"""The one place where an IP-Adapter's variant is decided, from keys and shapes only, and
where a UNet is recognised (its family, and whether its layers are where an adapter's are).

File names are never consulted: renamed files are the most reported failure of the
popular extension. Everything downstream reads the immutable AdapterConfig.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import IPAdapterFileError, IPAdapterMismatchError
from .layers import base_channels, layers_of_width, layout_difference

FAMILY_BY_CROSS_DIM = {768: "sd15", 2048: "sdxl"}
FAMILY_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}

IMAGE_EMBEDS = "image_embeds"                  # after the visual projection
PENULTIMATE = "penultimate_hidden_states"      # the encoder's own width
# The fields of ComfyUI's CLIP vision output that hold features (combined, mixed and projected alike).
CLIP_VISION_FEATURES = (IMAGE_EMBEDS, PENULTIMATE, "last_hidden_state")
FEATURES = (IMAGE_EMBEDS, PENULTIMATE)
PROJECTIONS = ("linear", "resampler", "mlp")

# The one table of supported CLIP vision encoders: the width of each feature they give.
# An encoder is recognised by this pair (file shapes, loaded models, adapter inputs).
VIT_H = "ViT-H/14"
VIT_BIGG = "ViT-bigG/14"
ENCODERS = {VIT_H: {IMAGE_EMBEDS: 1024, PENULTIMATE: 1280},
            VIT_BIGG: {IMAGE_EMBEDS: 1280, PENULTIMATE: 1664}}
ENCODER_BY_EMBEDS_DIM = {w[IMAGE_EMBEDS]: name for name, w in ENCODERS.items()}
ENCODER_BY_HIDDEN_DIM = {w[PENULTIMATE]: name for name, w in ENCODERS.items()}


def encoder_by_widths(hidden: int, embeds: int) -> str | None:
    """The encoder whose penultimate width is ``hidden`` and image_embeds width ``embeds``, or None."""
    return next((name for name, w in ENCODERS.items()
                 if (w[PENULTIMATE], w[IMAGE_EMBEDS]) == (hidden, embeds)), None)


# How the negative (unconditional) image tokens are made, as the reference does it.
UNCOND_PROJECT_ZEROS = "project zero image_embeds"
UNCOND_ENCODE_ZERO_IMAGE = "project encoder features of an all-zero normalised image"
UNCONDS = (UNCOND_PROJECT_ZEROS, UNCOND_ENCODE_ZERO_IMAGE)

RESAMPLER_DIM_HEAD = 64  # every released Resampler uses 64; heads = inner width / 64


@dataclass(frozen=True)
class ResamplerConfig:
    dim: int
    depth: int
    heads: int
    dim_head: int
    num_queries: int
    embedding_dim: int
    output_dim: int
    ff_mult: int


@dataclass(frozen=True)
class AdapterConfig:
    """Everything that differs between IP-Adapter variants."""

    family: str                      # "sd15" | "sdxl"
    projection: str                  # "linear" | "resampler" | "mlp"
    num_tokens: int                  # image tokens per image
    encoder: str                     # VIT_H | VIT_BIGG
    feature: str                     # IMAGE_EMBEDS | PENULTIMATE
    feature_dim: int                 # width of that feature
    cross_dim: int                   # 768 (SD1.5) or 2048 (SDXL)
    layer_hidden: tuple[int, ...]    # to_k_ip output width, in file order (k = 0, 1, ...)
    uncond: str                      # UNCOND_PROJECT_ZEROS | UNCOND_ENCODE_ZERO_IMAGE
    resampler: ResamplerConfig | None = None

    @property
    def model_channels(self) -> int:
        """Base width of the UNet the adapter is for (its first layer's width): 320 for the
        released UNets."""
        return base_channels(self.family, self.layer_hidden[0])

    @property
    def layers(self):
        """The adapter's layers (ComfyUI key, file index, width), derived from the UNet shape."""
        return layers_of_width(self.family, self.model_channels)

    @property
    def name(self) -> str:
        kind = {"linear": "base", "resampler": "plus", "mlp": "full-face"}[self.projection]
        width = "" if self.model_channels == 320 else f", {self.model_channels}-channel UNet"
        return f"{FAMILY_NAMES[self.family]} {kind} ({self.num_tokens} tokens, {self.encoder} {self.feature}{width})"


def _refuse_foreign(path, sections, rest, flat_keys) -> None:
    """Name what a non-IP-Adapter file looks like, so the user knows where it belongs."""
    keys = list(flat_keys)

    def any_key(pattern):
        return any(re.search(pattern, k) for k in keys)

    hint = "Supported are the IP-Adapter files for SD1.5 and SDXL listed in README.md (Models)."
    if any_key(r"lora") and sections["ip_adapter"]:
        raise IPAdapterFileError(path, "is an IP-Adapter FaceID file (it carries LoRA weights "
                                 "for face-recognition embeddings), a different family.", hint)
    if any(k.startswith("perceiver_resampler") for k in sections["image_proj"]):
        raise IPAdapterFileError(path, "is an IP-Adapter FaceID Plus file (face-recognition "
                                 "embeddings), a different family.", hint)
    if any_key(r"^model\.diffusion_model\.|^first_stage_model\.|^cond_stage_model\.|^conditioner\."):
        raise IPAdapterFileError(path, "looks like a Stable Diffusion checkpoint.",
                                 "Put it in models/checkpoints and load it with a checkpoint loader.")
    if any_key(r"^lora_unet_|^lora_te|\.lora_down\.|\.lora_A\."):
        raise IPAdapterFileError(path, "looks like a LoRA.", "Put it in models/loras and use a LoRA loader.")
    if any_key(r"^vision_model\.|^visual\."):
        raise IPAdapterFileError(path, "looks like a CLIP vision encoder.",
                                 "Put it in models/clip_vision and load it with the CLIP vision loader.")
    if any_key(r"^control_model\.|input_hint_block|controlnet_cond_embedding"):
        raise IPAdapterFileError(path, "looks like a ControlNet.", "Put it in models/controlnet.")
    missing = [s for s in sections if not sections[s]]
    if missing:
        sample = ", ".join(sorted(rest)[:3]) or "none"
        raise IPAdapterFileError(path, f"has no '{' or '.join(missing)}' weights (first other keys: "
                                 f"{sample}); this is not an IP-Adapter file.", hint)


def _shape(sd, key, path, section):
    t = sd.get(key)
    if not isinstance(t, torch.Tensor):
        raise IPAdapterFileError(path, f"is missing '{section}.{key}'.", "The file is incomplete: download it again.")
    return tuple(t.shape)


def detect_config(sections: dict[str, dict[str, torch.Tensor]], path="<state dict>",
                  rest: list[str] | tuple = ()) -> AdapterConfig:
    """Inspect keys and shapes and return the variant's config, or refuse with a clear error."""
    flat_keys = [f"{s}.{k}" for s in sections for k in sections[s]] + list(rest)
    _refuse_foreign(path, sections, rest, flat_keys)
    proj, ipa = sections["image_proj"], sections["ip_adapter"]

    k_shape = _shape(ipa, "1.to_k_ip.weight", path, "ip_adapter")
    cross_dim = k_shape[1]
    family = FAMILY_BY_CROSS_DIM.get(cross_dim)
    if family is None:
        raise IPAdapterFileError(path, f"has image tokens of width {cross_dim}; expected 768 (SD1.5) "
                                 "or 2048 (SDXL).", "Only SD1.5 and SDXL IP-Adapters are supported.")
    layer_hidden = _layer_widths(ipa, family, cross_dim, path)

    resampler = None
    if "proj.3.weight" in proj:
        projection, feature = "mlp", PENULTIMATE
        feature_dim = _shape(proj, "proj.0.weight", path, "image_proj")[1]
        out = _shape(proj, "proj.2.weight", path, "image_proj")[0]
        num_tokens = 257 if feature_dim in ENCODER_BY_HIDDEN_DIM else 0
    elif "latents" in proj:
        projection, feature = "resampler", PENULTIMATE
        resampler = _resampler_config(proj, path)
        feature_dim, out, num_tokens = resampler.embedding_dim, resampler.output_dim, resampler.num_queries
    elif "proj.weight" in proj and "norm.weight" in proj:
        projection, feature = "linear", IMAGE_EMBEDS
        rows, feature_dim = _shape(proj, "proj.weight", path, "image_proj")
        out = _shape(proj, "norm.weight", path, "image_proj")[0]
        num_tokens = rows // out if out and rows % out == 0 else 0
    else:
        raise IPAdapterFileError(path, "has an image projection of an unknown kind (keys: "
                                 f"{', '.join(sorted(proj)[:6])}).",
                                 "Supported: linear (proj+norm), Resampler (latents) and full MLP (proj.0..3).")
    if out != cross_dim:
        raise IPAdapterFileError(path, f"projects to width {out} but its attention layers read width "
                                 f"{cross_dim}; the file is inconsistent.", "Download it again.")
    table = ENCODER_BY_EMBEDS_DIM if feature == IMAGE_EMBEDS else ENCODER_BY_HIDDEN_DIM
    encoder = table.get(feature_dim)
    if encoder is None or num_tokens <= 0:
        raise IPAdapterFileError(path, f"expects CLIP {feature} of width {feature_dim}, which matches "
                                 f"no supported encoder (expected one of {sorted(table)}).",
                                 "Supported encoders are OpenCLIP ViT-H/14 and ViT-bigG/14.")
    uncond = UNCOND_PROJECT_ZEROS if projection == "linear" else UNCOND_ENCODE_ZERO_IMAGE
    return AdapterConfig(family, projection, num_tokens, encoder, feature, feature_dim, cross_dim,
                         layer_hidden, uncond, resampler)


def _layer_widths(ipa, family, cross_dim, path) -> tuple[int, ...]:
    """The layer widths in file order, checked against the family's UNet structure at the width of
    the file's first layer (320 for the released UNets; narrower UNets of the same structure keep
    their own, so their adapters load like any other)."""
    first = ipa.get("1.to_k_ip.weight")
    ok = isinstance(first, torch.Tensor) and first.ndim == 2 and first.shape[0] > 0
    channels = base_channels(family, int(first.shape[0])) if ok else 320
    expected = layers_of_width(family, channels)
    unet = f"{FAMILY_NAMES[family]} UNet" + ("" if channels == 320 else f" of {channels} base channels")
    want = {f"{l.file_index}.{p}.weight" for l in expected for p in ("to_k_ip", "to_v_ip")}
    have = set(ipa)
    if have != want:
        n = len({k.split(".")[0] for k in have})
        raise IPAdapterFileError(path, f"has {n} attention layers ({len(have)} tensors) but a "
                                 f"{FAMILY_NAMES[family]} IP-Adapter has {len(expected)}; "
                                 f"unexpected: {sorted(have - want)[:3]}, missing: {sorted(want - have)[:3]}.",
                                 "The file is damaged or not a supported IP-Adapter.")
    widths = []
    for layer in expected:
        for p in ("to_k_ip", "to_v_ip"):
            shape = tuple(ipa[f"{layer.file_index}.{p}.weight"].shape)
            if shape != (layer.hidden, cross_dim):
                raise IPAdapterFileError(path, f"layer {layer.file_index} {p} has shape {shape}; the "
                                         f"{unet} needs {(layer.hidden, cross_dim)}.",
                                         "The file is damaged or made for another model.")
        widths.append(layer.hidden)
    return tuple(widths)


def _resampler_config(proj, path) -> ResamplerConfig:
    _, num_queries, dim = _shape(proj, "latents", path, "image_proj")
    depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
    inner = _shape(proj, "layers.0.0.to_q.weight", path, "image_proj")[0]
    ff = _shape(proj, "layers.0.1.1.weight", path, "image_proj")[0]
    return ResamplerConfig(
        dim=dim, depth=depth, heads=inner // RESAMPLER_DIM_HEAD, dim_head=RESAMPLER_DIM_HEAD,
        num_queries=num_queries, embedding_dim=_shape(proj, "proj_in.weight", path, "image_proj")[1],
        output_dim=_shape(proj, "proj_out.weight", path, "image_proj")[0], ff_mult=ff // dim)


# ---------------------------------------------------------------- what a UNet is

def model_family(model) -> str:
    """'sd15' or 'sdxl' from the UNet's cross-attention width; refuses other models."""
    unet_config = unet_config_of(model)
    ctx = unet_config.get("context_dim")
    fam = FAMILY_BY_CROSS_DIM.get(ctx)
    if fam is None or "transformer_depth" not in unet_config:
        name = type(model.model).__name__
        raise IPAdapterMismatchError(
            f"model: IP-Adapter works on Stable Diffusion 1.5 and SDXL UNets; this model ({name}, "
            f"cross-attention width {ctx}) is neither. Load an SD1.5 or SDXL checkpoint.")
    return fam


def unet_config_of(model) -> dict:
    """The ComfyUI unet_config of a ModelPatcher's model ({} when it has none)."""
    return getattr(getattr(model.model, "model_config", None), "unet_config", {}) or {}


def check_model_layers(model, config) -> None:
    """Refuse a UNet of the family's width whose cross-attention layers are not where (or not as
    wide as) the adapter's are: distilled SDXL models (SSD-1B, Vega, KOALA), other depths or widths."""
    diff = layout_difference(unet_config_of(model), config.layers)
    if diff is not None:
        name = FAMILY_NAMES[config.family]
        raise IPAdapterMismatchError(
            f"model: this {type(model.model).__name__} UNet reads {name}-width text but its layers differ "
            f"from the {name} UNet the adapter was trained for: {diff}. Distilled models (SSD-1B, Segmind "
            f"Vega, KOALA) and other variants need an IP-Adapter trained for them; use a standard {name} "
            "checkpoint (or a fine-tune of it).")
