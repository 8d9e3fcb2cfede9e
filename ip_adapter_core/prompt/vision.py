"""Every CLIP vision question: which encoder a loaded model is (and whether it is the one an adapter
needs), encoding for IP-Adapter (crop modes, an optional mask), and the zero-image features the
hidden-state variants need for their negative tokens (host only). Which file holds which encoder
is model_folders.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import IPAdapterError, IPAdapterMismatchError
from ..files.config import (BLACK_IMAGE_NEGATIVE_ENCODERS, ENCODERS, IMAGE_EMBEDS, PENULTIMATE,
                            POOLED, SIGLIP, UNCOND_ENCODE_BLACK_IMAGE, AdapterConfig, encoder_by_widths)
from ..files.encoder_heads import read_pooling_head
from ..files.model_folders import find_clip_vision_file
from ..input_bounds import check_image_batch
from .embeds import ImagePrompt
from .references import CLIP_MEAN, CROP_POSITIONS, INTERPOLATIONS, prepare_reference
from .tokens import parse_image_weights, project

CROP_MODES = ("center", "squash", "pad")
# "default": ComfyUI's encoder does the resizing (bicubic, antialiased), as before the options existed.
ENCODE_INTERPOLATIONS = ("default",) + INTERPOLATIONS
ZERO_IMAGE_ATTR = "ipadapter_zero_image_penultimate"
BLACK_IMAGE_ATTR = "ipadapter_black_image_embeds"
FEATURES_FILE_ATTR = "ipadapter_features_file"  # set by features_io.load_features: the file the features came from
# which adapters read each feature, for the message when a loaded file lacks the one an adapter needs
READ_BY = {IMAGE_EMBEDS: "base adapters, XLabs' Flux ones", PENULTIMATE: "plus and full-face adapters",
           POOLED: "InstantX's Flux adapter"}


def encoder_of(clip_vision) -> str | None:
    """Name the CLIP vision model (ViT-H/14, ViT-bigG/14, ViT-L/14) from its structure, or None. A model of an
    encoder's widths at another image size than its adapters' is named with its size (ViT-L/14 at 336 px)."""
    try:
        emb = clip_vision.model.vision_model.embeddings.class_embedding.shape[-1]
        proj = clip_vision.model.visual_projection.weight.shape[0]
    except AttributeError:
        return _siglip_of(clip_vision)
    return encoder_by_widths(emb, proj, getattr(clip_vision, "image_size", None))


def _siglip_of(clip_vision) -> str | None:
    """SigLIP so400m/14 at 384 px (no class embedding, no projection), or None."""
    try:
        width = clip_vision.model.vision_model.post_layernorm.weight.shape[-1]
    except AttributeError:
        return None
    ok = (width, getattr(clip_vision, "image_size", None)) == (ENCODERS[SIGLIP][POOLED], 384)
    return SIGLIP if ok else None


def attach_pooling_head(clip_vision, head) -> None:
    """Keep SigLIP's pooling head (files/encoder_heads.py) with the loaded encoder: ComfyUI's loader drops it."""
    clip_vision.ipadapter_pooling_head = head


def load_encoder_for(config: AdapterConfig, path=None):
    """Load the CLIP vision model an adapter needs (found in models/clip_vision by its shapes unless ``path``
    is given), with SigLIP's pooling head for InstantX's Flux adapter."""
    import comfy.clip_vision

    path = path or find_clip_vision_file(config)
    clip_vision = comfy.clip_vision.load(path)
    if config.encoder == SIGLIP and config.feature == POOLED:  # the SD3.5 adapter reads the penultimate states
        attach_pooling_head(clip_vision, read_pooling_head(path))
    return clip_vision


def pooled_features(clip_vision, last_hidden_state: torch.Tensor) -> torch.Tensor:
    """SigLIP's pooler_output from the post-LayerNorm tokens ComfyUI's encoder returns, in float32."""
    head = getattr(clip_vision, "ipadapter_pooling_head", None)
    if head is None:
        raise IPAdapterError(NO_POOLING_HEAD)
    with torch.no_grad():
        return head.to(last_hidden_state.device)(last_hidden_state.float())


NO_POOLING_HEAD = (
    f"clip_vision: InstantX's Flux adapter reads {SIGLIP}'s attention-pooled output, which needs the encoder's "
    "pooling head (vision_model.head.*); ComfyUI's Load CLIP Vision drops it. Load the encoder with IP-Adapter "
    "CLIP Vision Loader, which keeps it, from a file that has it (google/siglip-so400m-patch14-384's "
    "model.safetensors).")


def check_encoder(config: AdapterConfig, clip_vision, what="clip_vision") -> None:
    found = encoder_of(clip_vision)
    if found != config.encoder:
        raise IPAdapterMismatchError(
            f"{what}: the adapter ({config.name}) needs the {config.encoder} CLIP vision model; the "
            f"one connected is {found or 'another encoder'}. Load the {config.encoder} file from "
            "models/clip_vision (README.md, Models).")


def zero_image_features(clip_vision) -> torch.Tensor:
    """Penultimate hidden states for an all-zero *normalised* pixel tensor: the reference's
    negative input for the Resampler and full-face variants."""
    import comfy.model_management as mm

    cached = getattr(clip_vision, "_ipadapter_zero_image", None)
    if cached is not None:  # one full encoder pass; the same for every image (bench: ~5 s on CPU)
        return cached
    mm.load_model_gpu(clip_vision.patcher)
    size = getattr(clip_vision, "image_size", 224)
    pixels = torch.zeros(1, 3, size, size, device=clip_vision.load_device)
    with torch.no_grad():
        out = clip_vision.model(pixel_values=pixels, intermediate_output=-2)
    clip_vision._ipadapter_zero_image = out[1].to(mm.intermediate_device()).float()
    return clip_vision._ipadapter_zero_image


def black_image_features(clip_vision) -> torch.Tensor:
    """image_embeds of a black picture, through ComfyUI's own preprocessing: the negative of XLabs' Flux
    adapters (their pipeline, and diffusers' FluxPipeline, encode ``np.zeros`` pixels). Cached on the encoder."""
    cached = getattr(clip_vision, "_ipadapter_black_image", None)
    if cached is None:
        size = getattr(clip_vision, "image_size", 224)
        out = encode_batches(clip_vision, torch.zeros(1, size, size, 3), False)
        cached = clip_vision._ipadapter_black_image = out.image_embeds.float()
    return cached


def _mean(clip_vision, image):
    mean = getattr(clip_vision, "image_mean", CLIP_MEAN)
    return torch.tensor(mean, dtype=image.dtype, device=image.device)


def prepare(clip_vision, image: torch.Tensor, crop: str, mask: torch.Tensor | None,
            interpolation: str = "default", sharpening: float = 0.0) -> tuple[torch.Tensor, bool]:
    """Return (image, crop flag for ComfyUI's encode_image). Masked-out pixels and padding are
    set to the encoder's mean colour, which normalises to zero: they carry no content.

    With ``interpolation`` other than "default", a crop position of references.CROP_POSITIONS
    outside CROP_MODES, or ``sharpening`` > 0, the (masked) image goes through
    references.prepare_reference at the encoder's size ("default" resizes bicubic) and is
    encoded as it is (crop flag False): the pixels IP-Adapter Prepare Reference shows."""
    check_image_batch(image)
    if interpolation not in ENCODE_INTERPOLATIONS:
        raise IPAdapterError(f"interpolation: expected one of {ENCODE_INTERPOLATIONS}, got {interpolation!r}.")
    if crop not in CROP_POSITIONS:
        raise IPAdapterError(f"crop: expected one of {CROP_POSITIONS}, got {crop!r}.")
    own = interpolation != "default" or sharpening != 0 or crop not in CROP_MODES
    image = image[..., :3]
    mean = _mean(clip_vision, image)
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim != 3 or mask.shape[0] not in (1, image.shape[0]):
            raise IPAdapterError(f"mask: expected [H, W] or [1 or {image.shape[0]}, H, W]; got shape "
                                 f"{tuple(mask.shape)}.")
        m = F.interpolate(mask.unsqueeze(1).float(), size=image.shape[1:3], mode="bilinear",
                          align_corners=False).squeeze(1).unsqueeze(-1).to(image)
        image = image * m + mean * (1 - m)
    if own:
        size = getattr(clip_vision, "image_size", 224)
        pixels = prepare_reference(image, size, "bicubic" if interpolation == "default" else interpolation,
                                   crop, sharpening, mean=mean.tolist())
        return pixels, False
    if crop == "pad":
        b, h, w, c = image.shape
        s = max(h, w)
        canvas = mean.expand(b, s, s, c).clone()
        top, left = (s - h) // 2, (s - w) // 2
        canvas[:, top:top + h, left:left + w] = image
        return canvas, False
    return image, crop == "center"


def encode(clip_vision, image: torch.Tensor, crop: str = "center", mask: torch.Tensor | None = None,
           interpolation: str = "default", sharpening: float = 0.0, batch_size: int = 0):
    """Encode images; the result is ComfyUI's CLIP_VISION_OUTPUT with the zero-image
    penultimate states attached, so projection can build reference negatives. ``crop``,
    ``interpolation``, ``sharpening``: see ``prepare``. ``batch_size``: see ``encode_batches``."""
    pixels, crop_flag = prepare(clip_vision, image, crop, mask, interpolation, sharpening)
    out = encode_batches(clip_vision, pixels, crop_flag, batch_size)
    encoder = encoder_of(clip_vision)
    if encoder == SIGLIP:  # InstantX: pooled features (when the head is there); zeros for the negative
        if getattr(clip_vision, "ipadapter_pooling_head", None) is not None:
            out[POOLED] = pooled_features(clip_vision, out["last_hidden_state"])
    elif encoder in BLACK_IMAGE_NEGATIVE_ENCODERS:
        out[BLACK_IMAGE_ATTR] = black_image_features(clip_vision)
    else:
        out[ZERO_IMAGE_ATTR] = zero_image_features(clip_vision)
    return out


def encode_batches(clip_vision, pixels: torch.Tensor, crop_flag: bool, batch_size: int = 0):
    """``clip_vision.encode_image`` over ``pixels`` in chunks of ``batch_size`` images (0, or a
    size >= the batch: one call for all), so a long batch (video frames) never holds every
    image's activations at once. Every tensor field of the CLIP_VISION_OUTPUT (image_embeds,
    last_hidden_state, penultimate_hidden_states, all_hidden_states, mm_projected, ...) is
    concatenated over the chunks; a field that is None stays None.

    Before each chunk ComfyUI's interrupt flag is checked (Cancel stops a long encode with
    InterruptProcessingException); with more than one chunk a ComfyUI progress bar over the
    images advances by each chunk's size. The features equal the single call's up to
    float rounding (matrix kernels may sum in another order for another batch size)."""
    import comfy.model_management
    import comfy.utils

    batch_size = int(batch_size or 0)
    if batch_size < 0:
        raise IPAdapterError(f"encode_batch_size: expected 0 (all at once) or a positive number, got {batch_size}.")
    total = pixels.shape[0]
    size = total if batch_size == 0 else min(batch_size, total)
    starts = range(0, total, size)
    bar = comfy.utils.ProgressBar(total) if len(starts) > 1 else None
    chunks = []
    for start in starts:
        comfy.model_management.throw_exception_if_processing_interrupted()
        # ComfyUI runs nodes under inference_mode; called from anywhere else, encode_image would
        # record an autograd graph through the whole encoder and keep its activations alive.
        chunk = pixels[start:start + size]
        with torch.no_grad():
            chunks.append(clip_vision.encode_image(chunk, crop=crop_flag))
        if bar is not None:
            bar.update(chunk.shape[0])
    if len(chunks) == 1:
        return chunks[0]
    return _concat_outputs(chunks)


def _concat_outputs(chunks):
    """One CLIP_VISION_OUTPUT from several: tensor fields concatenated along the batch."""
    out = type(chunks[0])()
    for key, value in vars(chunks[0]).items():
        if torch.is_tensor(value) and value.ndim > 0:
            value = torch.cat([getattr(c, key) for c in chunks], dim=0)
        out[key] = value
    return out


def image_prompt(adapter, image_features, combine: str = "concat", negative_features=None, clip_vision=None,
                 weights=None):
    """CLIP_VISION_OUTPUT(s) -> an ImagePrompt of ``adapter`` (an AdapterHandle).

    The zero-image features for plus/full-face negatives come from our encode output, or
    are computed with ``clip_vision`` when the features came from ComfyUI's own encoder.
    ``weights``: one multiplier per image, or the node's ``image_weights`` text (parsed
    here, where the number of images is known); None weighs every image 1.
    """
    cfg = adapter.config
    feats = _feature(image_features, cfg.feature, "image_features")
    neg = _feature(negative_features, cfg.feature, "negative_features") if negative_features is not None else None
    black = cfg.uncond == UNCOND_ENCODE_BLACK_IMAGE
    zero = getattr(image_features, BLACK_IMAGE_ATTR if black else ZERO_IMAGE_ATTR, None)
    if zero is None and clip_vision is not None and (black or cfg.feature != IMAGE_EMBEDS):
        check_encoder(cfg, clip_vision)
        zero = black_image_features(clip_vision) if black else zero_image_features(clip_vision)
    if isinstance(weights, str):
        weights = parse_image_weights(weights, feats.shape[0])
    pos, negative = project(adapter.model.image_proj, cfg, feats, neg, zero, combine, weights=weights)
    return ImagePrompt(pos, negative, cfg, adapter.path)


def _feature(output, name, what):
    t = getattr(output, name, None)
    source = getattr(output, FEATURES_FILE_ATTR, None)
    if t is None and source is not None:
        held = [f"{f} (for {READ_BY[f]})" for f in READ_BY if getattr(output, f, None) is not None]
        raise IPAdapterError(f"{what}: the features file '{source}' holds {' and '.join(held) or 'no features'}; this "
                             f"adapter needs {name}. Encode the reference with IP-Adapter Encode Image and the CLIP "
                             "vision model this adapter needs (and save that with IP-Adapter Save Features).")
    if t is None and name == POOLED:
        raise IPAdapterError(f"{what}: no SigLIP pooled output. " + NO_POOLING_HEAD.removeprefix("clip_vision: "))
    if t is None:
        raise IPAdapterError(f"{what}: this CLIP vision output has no '{name}'; encode the image with a "
                             "CLIP vision model (ViT-H/14 or ViT-bigG/14).")
    return t.float()
