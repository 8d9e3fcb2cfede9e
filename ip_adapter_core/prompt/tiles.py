"""Tiles of a reference image: the square tiles that cover a reference of any aspect ratio,
the masks that confine each tile's image prompt to where it lies, and the "enhancer" that
mixes whole-image CLIP features with those of a grid of cells. Geometry and mixing are
pure tensor functions; ``encode_tiles`` and ``enhanced_features`` call the encoder."""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..errors import IPAdapterError
from ..files.config import CLIP_VISION_FEATURES
from ..input_bounds import check_image_batch
from .tokens import ONE_PER_FRAME
from .vision import encode, image_prompt

MAX_ENHANCE_TILES = 16
# Each tile is an encoder pass, an attention branch in every cross-attention layer and a
# full-size mask (tiles × H × W floats): at tile_size 8 a 768² reference made 9,216 tiles and
# 20 GiB of masks. The widget's step is 8 but the server does not enforce steps, so the core
# refuses 1..7 itself; 64 tiles cover a 64:1 strip, or a 4:1 one in tiles a quarter of its height.
MIN_TILE_SIZE = 8
MAX_TILES = 64
# Cells per encoder call in the enhancer: enhance_tiles 16 on a batch of B images is 256·B cells,
# so one call would hold all their activations at once.
ENHANCE_BATCH = 16
PLACEMENTS = ("where the tile lies", "everywhere")
# A batch of references: all images in every frame's prompt, or image k (its tiles) for frame k.
TILE_BATCHES = ("together", ONE_PER_FRAME)


def _offsets(length: int, side: int) -> list[int]:
    """n = ceil(length / side) starts, evenly spread from 0 to length - side: start_i =
    round(i·(length - side) / (n - 1)), halves rounded up (integer arithmetic, exact)."""
    n = math.ceil(length / side)
    if n == 1:
        return [0]
    span = length - side
    return [(2 * i * span + (n - 1)) // (2 * (n - 1)) for i in range(n)]


def tile_grid(height: int, width: int, tile: int = 0) -> list[tuple[int, int, int, int]]:
    """Square tiles covering an ``height×width`` image, as boxes (y0, x0, y1, x1), rows
    top to bottom, each row left to right.

    The side is s = min(height, width), or ``tile`` pixels when MIN_TILE_SIZE <= tile < that;
    at most MAX_TILES tiles (else IPAdapterError). Along each
    axis of length L there are n = ceil(L / s) tiles starting at round(i·(L - s)/(n - 1)):
    the first touches one edge, the last the other, neighbours overlap by the same amount
    (±1 pixel of rounding), (n·s - L)/(n - 1) on average. A square image with the default
    side is one tile, the whole image."""
    if height < 1 or width < 1:
        raise IPAdapterError(f"image: expected a picture of at least 1×1 pixels; got {height}×{width}.")
    if tile != 0 and not MIN_TILE_SIZE <= tile:
        raise IPAdapterError(f"tile_size: expected 0 (the short side) or at least {MIN_TILE_SIZE} pixels; got "
                             f"{tile}. Use 0, or a side of {MIN_TILE_SIZE} or more.")
    s = min(height, width) if tile == 0 else min(tile, height, width)
    count = math.ceil(height / s) * math.ceil(width / s)
    if count > MAX_TILES:
        raise IPAdapterError(f"tile_size: a {height}×{width} reference in tiles of {s} pixels makes {count} tiles; "
                             f"at most {MAX_TILES} are allowed (each is an encoder pass, an attention branch "
                             f"and a full-size mask). Use a larger tile_size (0 = the short side), or crop the "
                             "reference.")
    return [(y, x, y + s, x + s) for y in _offsets(height, s) for x in _offsets(width, s)]


def tile_masks(boxes, height: int, width: int) -> torch.Tensor:
    """[n, height, width] masks, one per box: 1/c inside the box where c tiles cover the
    pixel, 0 outside. Where tiles overlap they share the pixel evenly; every covered pixel's
    masks sum to exactly 1 for c = 1, 2, 4 (else to 1 within float rounding)."""
    inside = torch.zeros(len(boxes), height, width)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        inside[i, y0:y1, x0:x1] = 1.0
    count = inside.sum(0, keepdim=True)
    return inside / count.clamp_min(1.0)


def cut_tiles(image: torch.Tensor, boxes) -> list[torch.Tensor]:
    """IMAGE [B, H, W, C] -> one [B, s, s, C] crop per box."""
    return [image[:, y0:y1, x0:x1] for (y0, x0, y1, x1) in boxes]


def tiled_prompts(adapter, clip_vision, image: torch.Tensor, placement: str, tile: int = 0,
                  batch: str = "together"):
    """(prompts, masks per prompt, tile crops, all tile masks) for a tiled reference.

    Each tile is encoded whole ("squash" of a square crop: a plain resize to the encoder's
    size, nothing cut off) and projected. "where the tile lies": one prompt per tile with its
    mask [1, H, W] (None when one tile covers the image: exactly the untiled prompt).
    "everywhere": one prompt of all tiles' tokens, no mask.

    A batch of B references, ``batch`` "together": every frame gets all images (a tile's prompt
    concatenates the batch's images; everywhere: tile-major, the images within each tile).
    "one per frame" (ComfyUI_IPAdapter_plus's IPAdapterTiledBatch): each prompt holds B token sets
    and frame k gets image k's, the last image holding when there are fewer images than frames;
    everywhere: set k is image k's tiles side by side in tile order, the tokens image k alone gives
    with "together"."""
    if placement not in PLACEMENTS:
        raise IPAdapterError(f"placement: expected one of {PLACEMENTS}, got {placement!r}.")
    if batch not in TILE_BATCHES:
        raise IPAdapterError(f"batch: expected one of {TILE_BATCHES}, got {batch!r}.")
    check_image_batch(image)
    boxes = tile_grid(image.shape[1], image.shape[2], tile)
    crops = cut_tiles(image[..., :3], boxes)
    masks = tile_masks(boxes, image.shape[1], image.shape[2])
    combine = "concat" if batch == "together" else ONE_PER_FRAME
    if placement == "everywhere":
        prompt = image_prompt(adapter, encode(clip_vision, torch.cat(crops), "squash"), combine)
        if batch == ONE_PER_FRAME:
            prompt = replace(prompt, positive=frames_of_tiles(prompt.positive, len(boxes)),
                             negative=frames_of_tiles(prompt.negative, len(boxes)))
        return [prompt], [None], crops, masks
    prompts = [image_prompt(adapter, encode(clip_vision, c, "squash"), combine) for c in crops]
    regions = [None] if len(boxes) == 1 else [masks[i:i + 1] for i in range(len(boxes))]
    return prompts, regions, crops, masks


def frames_of_tiles(tokens: torch.Tensor, tiles: int) -> torch.Tensor:
    """One token set per tile and image, tile-major [tiles·B, T, C] -> one per image [B, tiles·T, C]:
    image k's tiles side by side in tile order."""
    n, t, c = tokens.shape
    return tokens.reshape(tiles, n // tiles, t, c).transpose(0, 1).reshape(n // tiles, tiles * t, c)


# ----------------------------------------------------------------------------- enhancer

def enhance_cells(image: torch.Tensor, tiles: int) -> torch.Tensor:
    """IMAGE [B, H, W, C] -> [B·tiles², H//tiles, W//tiles, C]: a tiles×tiles grid of cells,
    image-major, rows then columns; the last H mod tiles rows and W mod tiles columns are
    left out (as ComfyUI_IPAdapter_plus's split_tiles)."""
    b, h, w, c = image.shape
    ch, cw = h // tiles, w // tiles
    if ch < 1 or cw < 1:
        raise IPAdapterError(f"enhance_tiles: {tiles}×{tiles} cells do not fit a {h}×{w} image; use at most "
                             f"{min(h, w, MAX_ENHANCE_TILES)} tiles.")
    x = image[:, :ch * tiles, :cw * tiles].reshape(b, tiles, ch, tiles, cw, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b * tiles * tiles, ch, cw, c)


def merge_cells(features: torch.Tensor, tiles: int, key: str) -> torch.Tensor:
    """Features of the cells [B·tiles², ...] -> one feature per image [B, ...].

    Vectors (image_embeds): the mean over the cells. Token states [.., 1 + g², D] (class
    token, then a g×g patch grid): the class token is the cells' mean; the patch grids are
    laid side by side as the cells lie (a (tiles·g)×(tiles·g) grid) and average-pooled back
    to g×g (each token the mean of a tiles×tiles block), as the popular extension's
    merge_hiddenstates."""
    n = tiles * tiles
    f = features.reshape(-1, n, *features.shape[1:])
    if features.ndim == 2:
        return f.mean(1)
    b, _, t, d = f.shape
    g = math.isqrt(t - 1)
    if g * g != t - 1:
        raise IPAdapterError(f"{key}: expected a class token and a square patch grid; got {t} tokens.")
    cls_token = f[:, :, :1].mean(1)
    grid = f[:, :, 1:].reshape(b, tiles, tiles, g, g, d).permute(0, 5, 1, 3, 2, 4)
    pooled = F.adaptive_avg_pool2d(grid.reshape(b, d, tiles * g, tiles * g), (g, g))
    return torch.cat([cls_token, pooled.flatten(2).transpose(1, 2)], dim=1)


def mix_features(whole, cells, tiles: int, ratio: float):
    """f = (1 - ratio)·whole + ratio·merge_cells(cells) for each CLIP_VISION_FEATURES tensor that
    both outputs hold, in float32; ``whole`` is changed in place and returned (its other
    entries, the zero-image features among them, kept)."""
    for key in CLIP_VISION_FEATURES:
        w, c = getattr(whole, key, None), getattr(cells, key, None)
        if w is None or c is None:
            continue
        merged = merge_cells(c.float(), tiles, key).to(w.device)
        whole[key] = (1.0 - ratio) * w.float() + ratio * merged
    return whole


def enhanced_features(clip_vision, image: torch.Tensor, tiles: int = 2, ratio: float = 0.5):
    """The whole images' features (centre crop) mixed with those of a tiles×tiles grid of
    cells (each centre-cropped, ENHANCE_BATCH per encoder call), see ``mix_features``. ratio 0
    or tiles 1 is the plain encode, bit for bit (the cells are not encoded)."""
    check_image_batch(image)
    if not 1 <= tiles <= MAX_ENHANCE_TILES:
        raise IPAdapterError(f"enhance_tiles: expected 1..{MAX_ENHANCE_TILES}; got {tiles}.")
    if not (0.0 <= ratio <= 1.0):
        raise IPAdapterError(f"enhance_ratio: expected 0..1; got {ratio}.")
    whole = encode(clip_vision, image, "center")
    if ratio == 0 or tiles == 1:
        return whole
    cells = encode(clip_vision, enhance_cells(image[..., :3], tiles), "center", batch_size=ENHANCE_BATCH)
    return mix_features(whole, cells, tiles, ratio)
