"""The one place where an IP-Adapter's variant is decided, from keys and shapes only (which base model a
ComfyUI model is, and whether its layers are where an adapter's are, is base_model.py).

File names are never consulted: renamed files are the most reported failure of the
popular extension. Everything downstream reads the immutable AdapterConfig.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import IPAdapterFileError
from ..networks.faceid import FACE_MLP_HIDDEN
from .flux_layout import FLUX, FLUX1, FLUX_HEAD_DIM, INSTANTX, XLABS, flux_layers
from .layers import base_channels, layers_of_width
from .sd3_layout import SD3, SD3_HEAD_DIM, SD35_LARGE, sd3_layers

FAMILY_BY_CROSS_DIM = {768: "sd15", 2048: "sdxl"}
UNET_FAMILIES = ("sd15", "sdxl")
# Kolors (Kwai-Kolors): an SDXL-layout UNet reading ChatGLM3 text (4096 wide) through its own projection to 2048
# (``encoder_hid_proj``), pooled text and size ids in a 5632-wide vector (FAMILIES.md §2). Its adapters are SDXL
# adapters by layout (family "sdxl") of their own base (AdapterConfig.base); base_model.py tells the UNets apart.
KOLORS = "kolors"
KOLORS_TEXT_WIDTH = 4096  # ChatGLM3's hidden width: Kolors FaceID Plus makes its tokens in it (released file)
FAMILY_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL", FLUX: "Flux.1", SD3: "SD3.5 Large"}

IMAGE_EMBEDS = "image_embeds"                  # after the visual projection
PENULTIMATE = "penultimate_hidden_states"      # the encoder's own width
# The fields of ComfyUI's CLIP vision output that hold features (combined, mixed and projected alike).
CLIP_VISION_FEATURES = (IMAGE_EMBEDS, PENULTIMATE, "last_hidden_state")
POOLED = "siglip_pooled"                       # SigLIP's attention-pooled output (networks/siglip_head.py)
FEATURES = (IMAGE_EMBEDS, PENULTIMATE, POOLED)
PROJECTIONS = ("linear", "resampler", "mlp", "faceid", "faceid-plus", "mlp-tokens", "time-resampler")

# FaceID adapters read a face-recognition embedding (insightface's ArcFace, 512 wide) instead of, or
# beside, CLIP features. ``AdapterConfig.face`` names the kind (FAMILIES.md §1):
FACE_EMBEDDING = "face_embedding"
FACE_EMBEDDING_DIM = 512
ARCFACE = "ArcFace"
FACEID = "faceid"                    # MLP 512 -> 4 tokens, with a rank-128 LoRA for the UNet
FACEID_PLUS = "faceid-plus"          # the same MLP, its tokens refined over CLIP of the face crop (plus, plusv2)
PORTRAIT = "portrait"                # MLP 512 -> 16 tokens per face, no LoRA (several faces concatenated)
PORTRAIT_UNNORM = "portrait-unnorm"  # a plain Resampler over the raw (not normalised) embedding
FACE_KINDS = (FACEID, FACEID_PLUS, PORTRAIT, PORTRAIT_UNNORM)
FACE_KIND_NAMES = {FACEID: "FaceID", FACEID_PLUS: "FaceID Plus", PORTRAIT: "FaceID Portrait",
                   PORTRAIT_UNNORM: "FaceID Portrait (unnormalised)"}
# the LoRA keys a FaceID file holds beside to_k_ip / to_v_ip, per attention processor index
LORA_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")
FACE_PLUS_DEPTH = 4  # FacePerceiverResampler layers in every release

# The one table of supported CLIP vision encoders: the width of each feature they give.
# An encoder is recognised by this pair (file shapes, loaded models, adapter inputs).
VIT_H = "ViT-H/14"
VIT_BIGG = "ViT-bigG/14"
VIT_L = "ViT-L/14"  # OpenAI's, 224 px: XLabs' Flux adapters
VIT_L_336 = "ViT-L/14-336"  # OpenAI's at 336 px (577 positions): Kolors' adapters
SIGLIP = "SigLIP so400m/14-384"  # google/siglip-so400m-patch14-384: InstantX's Flux and SD3.5 adapters
ENCODERS = {VIT_H: {IMAGE_EMBEDS: 1024, PENULTIMATE: 1280},
            VIT_BIGG: {IMAGE_EMBEDS: 1280, PENULTIMATE: 1664},
            VIT_L: {IMAGE_EMBEDS: 768, PENULTIMATE: 1024},
            VIT_L_336: {IMAGE_EMBEDS: 768, PENULTIMATE: 1024},
            SIGLIP: {POOLED: 1152, PENULTIMATE: 1152}}
# SigLIP so400m's pooling head (vision_model.head.*): heads and MLP width (SiglipVisionConfig)
SIGLIP_HEAD = {"heads": 16, "mlp": 4304}
# The image size of the encoders that share their widths with another (OpenAI's ViT-L/14 at 224 and 336 px): the
# same widths at another size give other features, so the size tells them apart.
ENCODER_IMAGE_SIZE = {VIT_L: 224, VIT_L_336: 336}
# UNet adapters read these encoders' features by width alone (Kolors' ViT-L/14-336 is told by its adapter's
# structure, _resampler_encoder)
ENCODER_BY_EMBEDS_DIM = {w[IMAGE_EMBEDS]: name for name, w in ENCODERS.items()
                         if IMAGE_EMBEDS in w and name != VIT_L_336}
ENCODER_BY_HIDDEN_DIM = {w[PENULTIMATE]: name for name, w in ENCODERS.items()
                         if PENULTIMATE in w and name not in (VIT_L_336, SIGLIP)}


def encoder_by_widths(hidden: int, embeds: int, size: int | None = None) -> str | None:
    """The encoder whose penultimate width is ``hidden`` and image_embeds width ``embeds`` (and, where two share
    them, whose image size is ``size``), or None; an encoder of known widths at an unknown size is named with it
    ("ViT-L/14 at 448 px")."""
    names = [name for name, w in ENCODERS.items() if (w.get(PENULTIMATE), w.get(IMAGE_EMBEDS)) == (hidden, embeds)]
    if not names or size is None:
        return names[0] if names else None
    return next((n for n in names if ENCODER_IMAGE_SIZE.get(n, size) == size), f"{names[0]} at {size} px")


# How the negative (unconditional) image tokens are made, as the reference does it.
UNCOND_PROJECT_ZEROS = "project zero image_embeds"
UNCOND_ENCODE_ZERO_IMAGE = "project encoder features of an all-zero normalised image"
# XLabs' Flux pipeline (and diffusers' FluxPipeline) encode a black picture for the negative
UNCOND_ENCODE_BLACK_IMAGE = "project image_embeds of a black image"
UNCONDS = (UNCOND_PROJECT_ZEROS, UNCOND_ENCODE_ZERO_IMAGE, UNCOND_ENCODE_BLACK_IMAGE)
# the encoders whose adapters take a black image's features as the negative (the others' need the zero image)
BLACK_IMAGE_NEGATIVE_ENCODERS = (VIT_L,)

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
    time_dim: int = 0                # SD3.5: width of the sinusoidal timestep features (0: not time-conditioned)


@dataclass(frozen=True)
class AdapterConfig:
    """Everything that differs between IP-Adapter variants."""

    family: str                      # "sd15" | "sdxl" | "flux"
    projection: str                  # "linear" | "resampler" | "mlp"
    num_tokens: int                  # image tokens per image
    encoder: str                     # VIT_H | VIT_BIGG
    feature: str                     # IMAGE_EMBEDS | PENULTIMATE
    feature_dim: int                 # width of that feature
    cross_dim: int                   # token width: 768 (SD1.5), 2048 (SDXL), 4096 (Flux)
    layer_hidden: tuple[int, ...]    # to_k_ip output width, in file order (k = 0, 1, ...)
    uncond: str                      # UNCOND_PROJECT_ZEROS | UNCOND_ENCODE_ZERO_IMAGE
    resampler: ResamplerConfig | None = None
    face: str = ""                   # one of FACE_KINDS for FaceID adapters, "" otherwise
    lora_rank: int = 0               # rank of the UNet LoRA a FaceID file carries (0: none)
    flux_kind: str = ""              # Flux: XLABS or INSTANTX (how K'/V' are made and where the term is added)
    single_blocks: int = 0           # Flux: how many of the layers are single-stream blocks (after the double)
    base: str = ""                   # KOLORS for Kolors' adapters (an SDXL-layout UNet of its own), "" otherwise
    text_proj: int = 0               # Kolors FaceID: the tokens (text width) go through the UNet's encoder_hid_proj
                                     # to this width before K'/V'; 0: K'/V' read the tokens as they are

    @property
    def timed(self) -> bool:
        """The tokens depend on the timestep (SD3.5's time-conditioned Resampler): the prompt carries the
        features and the patch projects them once per model evaluation (apply/sd3_patch.py)."""
        return self.projection == "time-resampler"

    @property
    def ip_bias(self) -> bool:
        """to_k_ip / to_v_ip have a bias (XLabs' Flux adapters)."""
        return self.flux_kind == XLABS

    @property
    def ip_inside(self) -> bool:
        """K'/V' are RMS-normed per head and the term is added to the block's attention output, before its
        output projection and gate (InstantX); otherwise it is added to the block's output (XLabs)."""
        return self.flux_kind == INSTANTX

    @property
    def kv_width(self) -> int:
        """The width to_k_ip / to_v_ip read: the tokens', or the UNet's text projection's (Kolors FaceID)."""
        return self.text_proj or self.cross_dim

    @property
    def base_name(self) -> str:
        return "Kolors" if self.base == KOLORS else FAMILY_NAMES[self.family]

    @property
    def clip_encoder(self) -> str | None:
        """The CLIP vision model the adapter needs (None for FaceID adapters that read only the face)."""
        if self.face in ("", FACEID_PLUS):
            return self.encoder if self.face == "" else VIT_L_336 if self.base == KOLORS else VIT_H
        return None

    @property
    def normed_face(self) -> bool:
        """Whether the face embedding is L2-normalised first (all but portrait-unnorm and Kolors', whose pipeline
        reads insightface's raw ``embedding``)."""
        return self.face != PORTRAIT_UNNORM and self.base != KOLORS

    @property
    def model_channels(self) -> int:
        """Base width of the UNet the adapter is for (its first layer's width): 320 for the
        released UNets."""
        return base_channels(self.family, self.layer_hidden[0])

    @property
    def double_blocks(self) -> int:
        """Flux: how many double-stream blocks the adapter acts in."""
        return len(self.layer_hidden) - self.single_blocks

    @property
    def layers(self):
        """The adapter's layers (ComfyUI key, file index, width), derived from the UNet shape or, on
        Flux, from the blocks the file has."""
        if self.family == FLUX:
            return flux_layers(self.double_blocks, self.single_blocks, self.layer_hidden[0])
        if self.family == SD3:
            return sd3_layers(len(self.layer_hidden), self.layer_hidden[0])
        return layers_of_width(self.family, self.model_channels)

    @property
    def name(self) -> str:
        if self.family == SD3:
            n, hidden = len(self.layer_hidden), self.layer_hidden[0]
            standard = (n, hidden) == (SD35_LARGE["depth"], SD35_LARGE["hidden_size"])
            size = "" if standard else f", {n} blocks {hidden} wide"
            return f"SD3.5 Large IP-Adapter ({self.num_tokens} tokens per step, {self.encoder} {self.feature}{size})"
        if self.family == FLUX:
            n, s, hidden = self.double_blocks, self.single_blocks, self.layer_hidden[0]
            standard = (n, hidden) == (FLUX1["depth"], FLUX1["hidden_size"]) and s in (0, FLUX1["depth_single_blocks"])
            size = "" if standard else f", {n}{f' + {s}' if s else ''} blocks {hidden} wide"
            if self.flux_kind == INSTANTX:
                return f"Flux.1 InstantX IP-Adapter ({self.num_tokens} tokens, {self.encoder} pooled{size})"
            version = {4: " v1", 16: " v2"}.get(self.num_tokens, "")
            return (f"Flux.1 XLabs IP-Adapter{version} ({self.num_tokens} tokens, {self.encoder} {self.feature}"
                    f"{size})")
        if self.face:
            width = "" if self.model_channels == 320 else f", {self.model_channels}-channel UNet"
            crop = f" + {self.clip_encoder} face crop" if self.face == FACEID_PLUS else ""
            inputs = "ArcFace face embedding" + crop
            lora = f", LoRA rank {self.lora_rank}" if self.lora_rank else ""
            return (f"{self.base_name} {FACE_KIND_NAMES[self.face]} ({self.num_tokens} tokens per face, "
                    f"{inputs}{lora}{width})")
        kind = {"linear": "base", "resampler": "plus", "mlp": "full-face"}[self.projection]
        width = "" if self.model_channels == 320 else f", {self.model_channels}-channel UNet"
        return f"{self.base_name} {kind} ({self.num_tokens} tokens, {self.encoder} {self.feature}{width})"


def _refuse_foreign(path, sections, rest, flat_keys) -> None:
    """Name what a non-IP-Adapter file looks like, so the user knows where it belongs."""
    keys = list(flat_keys)

    def any_key(pattern):
        return any(re.search(pattern, k) for k in keys)

    hint = ("Supported are the IP-Adapter and FaceID files for SD1.5 and SDXL, the Flux IP-Adapters and the SD3.5 "
            "Large one listed in README.md (Models).")
    if any_key(r"^(model\.diffusion_model\.)?double_blocks\.\d+\.img_attn\."):
        raise IPAdapterFileError(path, "looks like a Flux diffusion model.",
                                 "Put it in models/diffusion_models and load it with Load Diffusion Model.")
    if any_key(r"^(model\.diffusion_model\.)?joint_blocks\.\d+\."):
        raise IPAdapterFileError(path, "looks like an SD3 diffusion model (MMDiT).",
                                 "Put it in models/checkpoints (or models/diffusion_models) and load it with a "
                                 "checkpoint loader.")
    if any_key(r"^redux_(up|down)\."):
        raise IPAdapterFileError(path, "looks like Flux Redux, a style model.",
                                 "Put it in models/style_models and use ComfyUI's Apply Style Model.")
    if any_key(r"^model\.diffusion_model\.|^first_stage_model\.|^cond_stage_model\.|^conditioner\."):
        raise IPAdapterFileError(path, "looks like a Stable Diffusion checkpoint.",
                                 "Put it in models/checkpoints and load it with a checkpoint loader.")
    if any_key(r"^lora_unet_|^lora_te|\.lora_down\.|\.lora_A\."):
        raise IPAdapterFileError(path, "looks like a LoRA.",
                                 "Put it in models/loras and use a LoRA loader. (A FaceID '_lora.safetensors' is "
                                 "not needed: the FaceID .bin carries the same LoRA and IP-Adapter Apply uses it.)")
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
    proj = sections["image_proj"]
    ipa, lora = _split_lora(sections["ip_adapter"])
    if "0.norm_ip.linear.weight" in ipa:  # SD3.5's joint blocks, numbered from 0, each with its own norms
        return _sd3_config(proj, ipa, lora, path)
    if "0.to_k_ip.weight" in ipa:  # UNet adapters number their attn2 layers 1, 3, 5, ...; Flux's blocks from 0
        return _flux_config(proj, ipa, lora, path)

    k_shape = _shape(ipa, "1.to_k_ip.weight", path, "ip_adapter")
    cross_dim = k_shape[1]
    family = FAMILY_BY_CROSS_DIM.get(cross_dim)
    if family is None:
        raise IPAdapterFileError(path, f"has image tokens of width {cross_dim}; expected 768 (SD1.5) "
                                 "or 2048 (SDXL).", "Only SD1.5 and SDXL IP-Adapters are supported.")
    layer_hidden = _layer_widths(ipa, family, cross_dim, path)

    face = _face_config(proj, lora, family, cross_dim, layer_hidden, path)
    if face is not None:
        return face
    if lora:
        raise IPAdapterFileError(path, f"carries LoRA weights ({sorted(lora)[0]}, ...) but its image projection "
                                 "is not a FaceID one.", "The file is damaged or a variant this extension does not know.")
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
                                 "Supported: linear (proj+norm), Resampler (latents), full MLP (proj.0..3) and the "
                                 "FaceID projections (proj.0, proj.2, norm; perceiver_resampler).")
    _check_out(out, cross_dim, path)
    table = ENCODER_BY_EMBEDS_DIM if feature == IMAGE_EMBEDS else ENCODER_BY_HIDDEN_DIM
    encoder = table.get(feature_dim)
    base = ""
    if projection == "resampler" and family == "sdxl" and feature_dim == ENCODERS[VIT_L_336][PENULTIMATE]:
        # Kolors-IP-Adapter-Plus: the only SDXL-layout Resampler over ViT-L/14 states (at 336 px, 577 positions)
        encoder, base = VIT_L_336, KOLORS
    if encoder is None or num_tokens <= 0:
        raise IPAdapterFileError(path, f"expects CLIP {feature} of width {feature_dim}, which matches "
                                 f"no supported encoder (expected one of {sorted(table)}).",
                                 "Supported encoders are OpenCLIP ViT-H/14 and ViT-bigG/14.")
    uncond = UNCOND_PROJECT_ZEROS if projection == "linear" else UNCOND_ENCODE_ZERO_IMAGE
    return AdapterConfig(family, projection, num_tokens, encoder, feature, feature_dim, cross_dim,
                         layer_hidden, uncond, resampler, base=base)


def _flux_config(proj, ipa, lora, path) -> AdapterConfig:
    """Flux adapters (FAMILIES.md §3): XLabs' (renamed by flux_layout.xlabs_sections) project CLIP ViT-L/14
    image_embeds with Linear + LayerNorm and have K'/V' with a bias in each double block; InstantX's project
    SigLIP's pooled output with an MLP and have bias-free K'/V' in each double then each single block."""
    n = len({k.split(".")[0] for k in ipa})
    k_shape = _shape(ipa, "0.to_k_ip.weight", path, "ip_adapter")
    hidden, width = k_shape if len(k_shape) == 2 else (0, 0)
    if lora:
        raise IPAdapterFileError(path, f"is a Flux IP-Adapter that also carries LoRA weights ({sorted(lora)[0]}, "
                                 "...), which no release has.", "Download it again.")
    kind = XLABS if "proj.weight" in proj else INSTANTX if "proj.0.weight" in proj else ""
    ends = ("weight", "bias") if kind == XLABS else ("weight",)
    want = {f"{i}.to_{kv}_ip.{e}" for i in range(n) for kv in "kv" for e in ends}
    if not kind or set(ipa) != want or hidden % FLUX_HEAD_DIM or not hidden or not width \
            or (kind == INSTANTX and n % 3):
        raise IPAdapterFileError(
            path, f"is a Flux IP-Adapter of a layout this extension does not know ({n} blocks, first K' {k_shape}, "
            f"image_proj keys {', '.join(sorted(proj)[:4])}; unexpected: {sorted(set(ipa) - want)[:3]}, missing: "
            f"{sorted(want - set(ipa))[:3]}).",
            "Supported on Flux are XLabs' flux-ip-adapter v1 and v2 and InstantX's FLUX.1-dev-IP-Adapter "
            "(README.md, Models); a damaged file: download it again.")
    for key, t in ipa.items():
        if tuple(t.shape) != ((hidden, width) if key.endswith("weight") else (hidden,)):
            raise IPAdapterFileError(path, f"block tensor {key} has shape {tuple(t.shape)}; the other blocks have "
                                     f"{(hidden, width)}.", "The file is damaged: download it again.")
    for key in ("proj.weight", "proj.0.weight", "proj.2.weight", "norm.weight"):
        if key in proj and len(_shape(proj, key, path, "image_proj")) != (1 if key.startswith("norm") else 2):
            raise IPAdapterFileError(path, f"has image_proj.{key} of shape {_shape(proj, key, path, 'image_proj')}, "
                                     "not a " + ("vector." if key.startswith("norm") else "matrix."),
                                     "The file is damaged: download it again.")
    out = _shape(proj, "norm.weight", path, "image_proj")[0]
    _check_out(out, width, path)
    if kind == XLABS:
        rows, feature_dim = _shape(proj, "proj.weight", path, "image_proj")
        encoder, feature, uncond, single = VIT_L, IMAGE_EMBEDS, UNCOND_ENCODE_BLACK_IMAGE, 0
    else:
        inner, feature_dim = _shape(proj, "proj.0.weight", path, "image_proj")
        rows, inner2 = _shape(proj, "proj.2.weight", path, "image_proj")
        if inner2 != inner or inner != 2 * feature_dim:
            raise IPAdapterFileError(path, f"has an image projection of inconsistent shapes (proj.0 "
                                     f"[{inner}, {feature_dim}], proj.2 [{rows}, {inner2}]).", "Download it again.")
        # InstantX numbers 19 double then 38 single blocks; smaller files keep that 1 : 2 ratio
        encoder, feature, uncond, single = SIGLIP, POOLED, UNCOND_PROJECT_ZEROS, 2 * n // 3
    if rows % out or feature_dim != ENCODERS[encoder][feature]:
        raise IPAdapterFileError(path, f"projects {encoder} {feature} of width {feature_dim} to {rows} values; "
                                 f"expected whole tokens of width {out} from {ENCODERS[encoder][feature]}-wide "
                                 "features.", "The file is damaged: download it again.")
    projection = "linear" if kind == XLABS else "mlp-tokens"
    return AdapterConfig(FLUX, projection, rows // out, encoder, feature, feature_dim, width, (hidden,) * n, uncond,
                         flux_kind=kind, single_blocks=single)


_SD3_BLOCK = ("norm_ip.linear.weight", "norm_ip.linear.bias", "to_k_ip.weight", "to_v_ip.weight", "norm_q.weight",
              "norm_k.weight", "norm_ip_k.weight")


def _sd3_config(proj, ipa, lora, path) -> AdapterConfig:
    """InstantX's SD3.5-Large adapter (FAMILIES.md §4): a time-conditioned Resampler over SigLIP's penultimate states
    and, per joint block, norm_ip (from the time embedding), bias-free K'/V' and RMS norms per head of 64."""
    n = len({k.split(".")[0] for k in ipa})
    want = {f"{i}.{name}" for i in range(n) for name in _SD3_BLOCK}
    damaged = "The file is damaged: download it again."
    if lora or set(ipa) != want or "time_embedding.linear_1.weight" not in proj or "latents" not in proj:
        raise IPAdapterFileError(
            path, f"is an SD3.5 IP-Adapter of a layout this extension does not know ({n} blocks; unexpected: "
            f"{sorted(set(ipa) - want)[:3]}, missing: {sorted(want - set(ipa))[:3]}; image_proj keys "
            f"{', '.join(sorted(proj)[:4])}).",
            "Supported on SD3.5 is InstantX's SD3.5-Large-IP-Adapter (README.md, Models); a damaged file: download "
            "it again.")
    r = _resampler_config(proj, path)
    time_in = _shape(proj, "time_embedding.linear_1.weight", path, "image_proj")
    if len(time_in) != 2 or time_in[0] != r.dim or time_in[1] % 2:
        raise IPAdapterFileError(path, f"has a time embedding of shape {time_in} for a Resampler {r.dim} wide.",
                                 damaged)
    r = ResamplerConfig(**{**r.__dict__, "time_dim": time_in[1]})
    width = r.output_dim
    hidden = _shape(ipa, "0.to_k_ip.weight", path, "ip_adapter")[0]
    shapes = {"norm_ip.linear.weight": (2 * width, r.dim), "norm_ip.linear.bias": (2 * width,),
              "to_k_ip.weight": (hidden, width), "to_v_ip.weight": (hidden, width),
              "norm_q.weight": (SD3_HEAD_DIM,), "norm_k.weight": (SD3_HEAD_DIM,), "norm_ip_k.weight": (SD3_HEAD_DIM,)}
    for key, t in ipa.items():
        if tuple(t.shape) != shapes[key.split(".", 1)[1]]:
            raise IPAdapterFileError(path, f"block tensor {key} has shape {tuple(t.shape)}; expected "
                                     f"{shapes[key.split('.', 1)[1]]} (blocks {hidden} wide, tokens {width} wide, "
                                     f"time embedding {r.dim}).", damaged)
    if hidden % SD3_HEAD_DIM or not hidden:
        raise IPAdapterFileError(path, f"has joint blocks {hidden} wide, not whole heads of {SD3_HEAD_DIM}.", damaged)
    feature_dim = r.embedding_dim
    if feature_dim != ENCODERS[SIGLIP][PENULTIMATE]:
        raise IPAdapterFileError(path, f"reads image features of width {feature_dim}; the SD3.5 adapter reads "
                                 f"{SIGLIP}'s penultimate states ({ENCODERS[SIGLIP][PENULTIMATE]}).", damaged)
    return AdapterConfig(SD3, "time-resampler", r.num_queries, SIGLIP, PENULTIMATE, feature_dim, width,
                         (hidden,) * n, UNCOND_PROJECT_ZEROS, r)


def _check_out(out, cross_dim, path) -> None:
    if out != cross_dim:
        raise IPAdapterFileError(path, f"projects to width {out} but its attention layers read width "
                                 f"{cross_dim}; the file is inconsistent.", "Download it again.")


_LORA_KEY = re.compile(r"^(\d+)\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def _split_lora(ipa: dict) -> tuple[dict, dict]:
    """``ip_adapter`` -> (the to_k_ip / to_v_ip tensors, the FaceID LoRA tensors)."""
    lora = {k: v for k, v in ipa.items() if _LORA_KEY.match(k)}
    return {k: v for k, v in ipa.items() if k not in lora}, lora


def _face_config(proj, lora, family, cross_dim, layer_hidden, path) -> AdapterConfig | None:
    """The config of a FaceID file (FAMILIES.md §1.2), or None when the projection is not a face one."""
    common = dict(family=family, encoder=ARCFACE, feature=FACE_EMBEDDING, feature_dim=FACE_EMBEDDING_DIM,
                  cross_dim=cross_dim, layer_hidden=layer_hidden, uncond=UNCOND_PROJECT_ZEROS)
    if "latents" in proj and _shape(proj, "proj_in.weight", path, "image_proj")[1] == FACE_EMBEDDING_DIM:
        r = _resampler_config(proj, path)  # portrait-unnorm: a plain Resampler over the 512-d embedding
        _check_out(r.output_dim, cross_dim, path)
        _refuse_lora(lora, PORTRAIT_UNNORM, path)
        return AdapterConfig(projection="resampler", num_tokens=r.num_queries, resampler=r, face=PORTRAIT_UNNORM,
                             **common)
    if "proj.3.weight" in proj or "proj.0.weight" not in proj or "norm.weight" not in proj:
        return None
    hidden, width = _shape(proj, "proj.0.weight", path, "image_proj")
    if width != FACE_EMBEDDING_DIM:
        return None  # not a face projection; the caller names what it is
    rows, inner = _shape(proj, "proj.2.weight", path, "image_proj")
    out = _shape(proj, "norm.weight", path, "image_proj")[0]
    kolors = family == "sdxl" and out != cross_dim and "perceiver_resampler.proj_in.weight" in proj
    if kolors:
        # Kolors FaceID Plus: 6 tokens in the text encoder's width (ChatGLM3's 4096 in the release; the tests' small
        # Kolors-shaped UNets read narrower text), read by K'/V' through the UNet's encoder_hid_proj
        common.update(cross_dim=out, base=KOLORS, text_proj=cross_dim)
        cross_dim = out
    _check_out(out, cross_dim, path)
    if inner != hidden or hidden != FACE_MLP_HIDDEN or rows % out:
        raise IPAdapterFileError(path, f"has a FaceID projection of inconsistent shapes (proj.0 [{hidden}, {width}], "
                                 f"proj.2 [{rows}, {inner}], norm [{out}]).", "The file is damaged: download it again.")
    tokens = rows // out
    rank = _lora_rank(lora, layer_hidden, family, cross_dim, path)
    if "perceiver_resampler.proj_in.weight" in proj:
        clip = VIT_L_336 if kolors else VIT_H
        r = _face_resampler_config(proj, cross_dim, tokens, path, clip)
        # Kolors' pipeline projects zero CLIP states for the negative, tencent's the zero image's
        uncond = UNCOND_PROJECT_ZEROS if kolors else UNCOND_ENCODE_ZERO_IMAGE
        return AdapterConfig(projection="faceid-plus", num_tokens=tokens, resampler=r, face=FACEID_PLUS,
                             lora_rank=rank, **{**common, "encoder": clip, "uncond": uncond})
    return AdapterConfig(projection="faceid", num_tokens=tokens, face=FACEID if rank else PORTRAIT, lora_rank=rank,
                         **common)


def _refuse_lora(lora, kind, path) -> None:
    if lora:
        raise IPAdapterFileError(path, f"is a {FACE_KIND_NAMES[kind]} file but also carries LoRA weights "
                                 f"({sorted(lora)[0]}, ...), which no release of it has.", "Download it again.")


def _face_resampler_config(proj, cross_dim, tokens, path, clip=VIT_H) -> ResamplerConfig:
    """The FacePerceiverResampler of FaceID Plus: dim = cross width, heads = width / 64, the ID tokens as queries."""
    pr = {k.partition(".")[2]: v for k, v in proj.items() if k.startswith("perceiver_resampler.")}
    depth = len({k.split(".")[1] for k in pr if k.startswith("layers.")})
    ff = _shape(pr, "layers.0.1.1.weight", path, "image_proj.perceiver_resampler")[0]
    clip_dim = _shape(pr, "proj_in.weight", path, "image_proj.perceiver_resampler")[1]
    if clip_dim != ENCODERS[clip][PENULTIMATE]:
        raise IPAdapterFileError(path, f"has a FaceID Plus resampler reading CLIP width {clip_dim}; the released "
                                 f"ones read {clip} ({ENCODERS[clip][PENULTIMATE]}).", "Download it again.")
    return ResamplerConfig(dim=cross_dim, depth=depth, heads=cross_dim // RESAMPLER_DIM_HEAD,
                           dim_head=RESAMPLER_DIM_HEAD, num_queries=tokens, embedding_dim=clip_dim,
                           output_dim=cross_dim, ff_mult=ff // cross_dim)


def _lora_rank(lora, layer_hidden, family, cross_dim, path) -> int:
    """Check the FaceID LoRA (FAMILIES.md §1.2: per processor index i, attn1 at 2k and attn2 at 2k+1 of
    attn2 layer k, to_q/k/v/out down [r, in] and up [out, r]) and return its rank (0 without one)."""
    if not lora:
        return 0
    rank = lora.get("0.to_q_lora.down.weight", next(iter(lora.values()))).shape[0]
    want = {}
    for k, h in enumerate(layer_hidden):
        for i, ctx in ((2 * k, h), (2 * k + 1, cross_dim)):
            for p in LORA_PROJECTIONS:
                width_in = ctx if p in ("to_k", "to_v") else h
                want[f"{i}.{p}_lora.down.weight"] = (rank, width_in)
                want[f"{i}.{p}_lora.up.weight"] = (h, rank)
    if set(lora) != set(want):
        raise IPAdapterFileError(path, f"has {len(lora)} FaceID LoRA tensors where the {FAMILY_NAMES[family]} UNet "
                                 f"has {len(want)}; unexpected: {sorted(set(lora) - set(want))[:3]}, missing: "
                                 f"{sorted(set(want) - set(lora))[:3]}.", "The file is damaged: download it again.")
    for key, shape in want.items():
        if tuple(lora[key].shape) != shape:
            raise IPAdapterFileError(path, f"FaceID LoRA tensor {key} has shape {tuple(lora[key].shape)}; the "
                                     f"{FAMILY_NAMES[family]} UNet needs {shape}.", "The file is damaged: download it again.")
    return int(rank)


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
