"""Faces -> FaceID image tokens (positive and negative), as the original repository makes them.

Every FaceID file reads the 512-d ArcFace embedding of a face: L2-normalised (``normed_embedding``), except
portrait-unnorm, which reads it raw. FaceID Plus also reads CLIP ViT-H penultimate states of the face's aligned
crop (224 pixels in the reference); v2 adds the ID tokens back with weight ``s_scale`` (``shortcut``). The
negative follows the reference: the projection of a zero embedding (and, for Plus, of the encoder's output for
an all-zero normalised image).

Several faces combine as images do (tokens.combine): ``concat`` keeps each face's tokens (the portrait
adapters' way: 5 faces give 80 tokens), the others reduce the faces' inputs to one; ``one per frame`` gives
face i to frame i of a latent batch.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import IPAdapterError, IPAdapterMismatchError
from ..faces.face_set import FaceSet
from ..files.config import FACE_EMBEDDING_DIM, FACEID_PLUS, KOLORS, PORTRAIT_UNNORM, AdapterConfig
from ..input_bounds import check_magnitudes
from ..networks.ops import compute_dtype
from .embeds import ImagePrompt
from .tokens import ONE_PER_FRAME, PROJECT_MODES, combine, parse_image_weights
from .vision import check_encoder, encode_batches, prepare, zero_image_features

# plusv2 and plus have the same tensors; the file name is the only hint, so it is a setting (auto reads the name)
PLUS_VERSIONS = ("auto", "v2", "v1")
FACE_CROP_SIZE = 224  # the reference crops faces for CLIP at 224 (insightface norm_crop); the converter may pick 256
KOLORS_FACE_CROP = 336  # Kolors' pipeline: the face's square box, resized to its encoder's 336 px


def check_face_adapter(config: AdapterConfig, what: str = "ipadapter") -> None:
    if not config.face:
        raise IPAdapterMismatchError(f"{what}: this is not a FaceID adapter ({config.name}); faces need one of the "
                                     "FaceID files (README.md, Models). For image prompts use IP-Adapter Project.")


def plus_shortcut(version: str, handle) -> bool:
    """Whether FaceID Plus runs as v2 (shortcut). 'auto': what the preset that chose the file meant, else
    whether the file name says plusv2 (as the popular extension decides)."""
    if version not in PLUS_VERSIONS:
        raise IPAdapterError(f"faceid_version: expected one of {', '.join(PLUS_VERSIONS)}; got {version!r}.")
    if version == "auto":
        chosen = getattr(handle, "faceid_version", "")
        if chosen:
            return chosen == "v2"
        return "plusv2" in str(handle.path).replace("\\", "/").rsplit("/", 1)[-1].lower()
    return version == "v2"


def face_features(config: AdapterConfig, faces: FaceSet) -> torch.Tensor:
    """The face inputs the adapter reads: [n, 512] (normalised or raw)."""
    emb = faces.embeddings_for(config.normed_face).float()
    if emb.ndim != 2 or emb.shape[-1] != FACE_EMBEDDING_DIM or emb.shape[0] == 0:
        raise IPAdapterError(f"faces: expected [faces, {FACE_EMBEDDING_DIM}] ArcFace embeddings; got "
                             f"{tuple(emb.shape)}.")
    if not bool(torch.isfinite(emb).all()):
        raise IPAdapterError("faces: the face embeddings hold NaN or infinite values; analyse the faces again.")
    return emb


def project_faces(image_proj: torch.nn.Module, config: AdapterConfig, ids: torch.Tensor,
                  clip_states: torch.Tensor | None = None, zero_clip_states: torch.Tensor | None = None,
                  mode: str = "concat", weights: Sequence[float] | None = None, shortcut: bool = False,
                  s_scale: float = 1.0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) tokens [1, T, C] ([N, T, C] one per frame) of faces ``ids`` [n, 512] (and, for
    Plus, their crops' CLIP states [n, 257, 1280] and the zero-image states [1, 257, 1280])."""
    if mode not in PROJECT_MODES:
        raise IPAdapterError(f"combine: expected one of {PROJECT_MODES}, got {mode!r}.")
    check_magnitudes([s_scale], "weight_faceidv2")
    n = ids.shape[0]
    per_frame = mode == ONE_PER_FRAME
    mode = "concat" if per_frame else mode
    neg_mode = "concat" if mode == "concat" else "average"
    inputs = [torch.cat([combine(ids, mode, weights, "faces"), combine(torch.zeros_like(ids), neg_mode)])]
    plus = config.face == FACEID_PLUS
    if plus:
        if clip_states is None or zero_clip_states is None:
            raise IPAdapterError(f"clip_vision: the adapter ({config.name}) also reads CLIP {config.clip_encoder} "
                                 f"features of the face crop; connect the {config.clip_encoder} CLIP vision model.")
        if clip_states.shape[0] != n:
            raise IPAdapterError(f"faces: {n} face embeddings but {clip_states.shape[0]} face crops were encoded.")
        zero = zero_clip_states[:1].expand(n, *zero_clip_states.shape[1:])
        inputs.append(torch.cat([combine(clip_states, mode, weights, "faces"), combine(zero, neg_mode)]))
    weight = next(image_proj.parameters())
    inputs = [x.to(device=weight.device, dtype=compute_dtype(image_proj)) for x in inputs]
    with torch.no_grad():
        if plus:
            tokens = image_proj(*inputs, shortcut=shortcut, s_scale=s_scale)
        elif config.face == PORTRAIT_UNNORM:
            tokens = image_proj(inputs[0][:, None])  # the Resampler reads [B, 1, 512]
        else:
            tokens = image_proj(inputs[0])
    pos, neg = tokens.to(dtype).chunk(2)
    if per_frame:
        return pos, neg
    return pos.reshape(1, -1, pos.shape[-1]), neg.reshape(1, -1, neg.shape[-1])


def encode_face_crops(clip_vision, faces: FaceSet, size: int = FACE_CROP_SIZE,
                      config: AdapterConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLIP penultimate states of the face crops [n, positions, width], the negative's states) - host only.
    tencent's FaceID Plus: aligned crops, the zero image's states; Kolors': the faces' square boxes at 336 px,
    zero states (its pipeline projects zeros for the negative)."""
    kolors = config is not None and config.base == KOLORS
    crops = faces.box_crops(KOLORS_FACE_CROP) if kolors else faces.crops(size)
    # the crops are already the encoder's size: crop=True only skips ComfyUI's resize; encode_batches runs
    # without autograd (outside ComfyUI's inference_mode a recorded graph kept the encoder's 7 GB alive)
    states = encode_batches(clip_vision, crops, True)["penultimate_hidden_states"].float()
    return states, (torch.zeros_like(states[:1]) if kolors else zero_image_features(clip_vision))


def face_prompt(handle, faces: FaceSet, clip_vision=None, mode: str = "concat", version: str = "auto",
                s_scale: float = 1.0, lora_strength: float = 1.0, weights: str = "",
                crop_size: int = FACE_CROP_SIZE, text_proj_scale: float = 1.0,
                negative_image: torch.Tensor | None = None) -> ImagePrompt:
    """IP-Adapter Project Face: the ImagePrompt of ``faces`` for a FaceID ``handle``."""
    cfg = handle.config
    check_face_adapter(cfg)
    if not isinstance(faces, FaceSet):
        raise IPAdapterError(f"faces: expected the output of IP-Adapter Face Analysis; got {type(faces).__name__}.")
    check_magnitudes([lora_strength], "lora_strength")
    ids = face_features(cfg, faces)
    clip_states = zero = None
    if cfg.face == FACEID_PLUS:
        if clip_vision is None:
            raise IPAdapterError(f"clip_vision: the adapter ({cfg.name}) also reads CLIP features of the face crop; "
                                 f"connect the {cfg.clip_encoder} CLIP vision model (README.md, Models).")
        check_encoder(cfg, clip_vision)
        clip_states, zero = encode_face_crops(clip_vision, faces, crop_size, cfg)
        if negative_image is not None:
            # the popular extension's image_negative: the CLIP part of the negative is this picture's states (its
            # noise image, typically) instead of the zero image's / zeros; the face part stays the zero embedding
            pixels, crop_flag = prepare(clip_vision, negative_image, "center", None)
            zero = encode_batches(clip_vision, pixels[:1], crop_flag)["penultimate_hidden_states"].float()
    elif negative_image is not None:
        raise IPAdapterError(f"negative_image: the adapter ({cfg.name}) reads the face embedding only, which has no "
                             "image negative; disconnect negative_image.")
    check_magnitudes([text_proj_scale], "weight_kolors")
    # Kolors' FaceID Plus always adds its ID tokens back (its ProjPlusModel's shortcut); its file name says nothing
    kolors_auto = cfg.base == KOLORS and version == "auto"
    shortcut = (kolors_auto or plus_shortcut(version, handle)) if cfg.face == FACEID_PLUS else False
    pos, neg = project_faces(handle.model.image_proj, cfg, ids, clip_states, zero, mode,
                             parse_image_weights(weights, len(faces)), shortcut, s_scale)
    return ImagePrompt(pos, neg, cfg, handle.path, lora_strength=float(lora_strength),
                       text_proj_scale=float(text_proj_scale))
