"""Reference images before the encoder: cropping, resizing and sharpening them exactly as the
encoder will see them, and making noisy negative images from them. Pure tensor functions on
ComfyUI IMAGE batches ([B, H, W, 3], values 0..1); no host needed."""
from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F

from ..errors import IPAdapterError
from ..input_bounds import check_image_batch

# Order: the encoder's first three crop modes (vision.CROP_MODES), then the square-crop positions.
CROP_POSITIONS = ("center", "squash", "pad", "top", "bottom", "left", "right")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos")
NOISE_KINDS = ("fade", "dissolve", "gaussian", "shuffle")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
NEGATIVE_SIZE = 224


def _choice(value, options, what):
    if value not in options:
        raise IPAdapterError(f"{what}: expected one of {options}, got {value!r}.")


def resize(image: torch.Tensor, height: int, width: int, interpolation: str) -> torch.Tensor:
    """[B, H, W, C] -> [B, height, width, C]. nearest: torch 'nearest-exact' (the source pixel
    whose centre is nearest, as PIL's NEAREST); bilinear, bicubic: torch with antialias=True
    (PIL's filters: triangle / cubic a=-0.5, widened by the scale when shrinking); area: torch
    'area' (adaptive average pooling, no antialias option); lanczos: PIL's LANCZOS (a=3) per
    image and channel in 32-bit float mode (no 8-bit rounding)."""
    _choice(interpolation, INTERPOLATIONS, "interpolation")
    if image.shape[1:3] == (height, width):
        return image
    if interpolation == "lanczos":
        return _resize_pil_lanczos(image, height, width)
    x = image.movedim(-1, 1).float()
    if interpolation == "nearest":
        y = F.interpolate(x, size=(height, width), mode="nearest-exact")
    elif interpolation == "area":
        y = F.interpolate(x, size=(height, width), mode="area")
    else:
        y = F.interpolate(x, size=(height, width), mode=interpolation, align_corners=False, antialias=True)
    return y.movedim(1, -1).to(image.dtype)


def _resize_pil_lanczos(image, height, width):
    import numpy as np
    from PIL import Image

    out = []
    for img in image.detach().float().cpu().numpy():
        chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c])).resize((width, height),
                                                                                     Image.Resampling.LANCZOS))
                 for c in range(img.shape[-1])]
        out.append(np.stack(chans, axis=-1))
    return torch.from_numpy(np.stack(out)).to(device=image.device, dtype=image.dtype)


def crop_box(height: int, width: int, crop_position: str) -> tuple[int, int, int, int]:
    """(top, left, side, side): the square of side min(H, W) that a crop position keeps.
    center rounds the offset down, as ComfyUI's encoder does."""
    s = min(height, width)
    top, left = (height - s) // 2, (width - s) // 2
    if crop_position == "top":
        top = 0
    elif crop_position == "bottom":
        top = height - s
    elif crop_position == "left":
        left = 0
    elif crop_position == "right":
        left = width - s
    return top, left, s, s


def sharpen(image: torch.Tensor, amount: float) -> torch.Tensor:
    """y = clamp(x + amount * (4x - x_up - x_down - x_left - x_right), 0, 1) per channel, edge
    pixels replicated. amount 1 is the 3×3 kernel [[0,-1,0],[-1,5,-1],[0,-1,0]]; amount a blends
    it with the identity (1 - a)·x + a·(kernel * x). (ComfyUI_IPAdapter_plus's contrast-adaptive
    sharpening reaches this kernel at amount 1 where local contrast is full.)"""
    if not 0.0 <= amount <= 1.0:
        raise IPAdapterError(f"sharpening: expected 0..1, got {amount}.")
    if amount == 0:
        return image
    x = image.movedim(-1, 1).float()
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    neighbours = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    y = (x + amount * (4 * x - neighbours)).clamp(0, 1)
    return y.movedim(1, -1).to(image.dtype)


def prepare_reference(image: torch.Tensor, size: int = 224, interpolation: str = "bicubic",
                      crop_position: str = "center", sharpening: float = 0.0,
                      mean=CLIP_MEAN) -> torch.Tensor:
    """IMAGE [B, H, W, 3] -> [B, size, size, 3], what the encoder sees.

    center/top/bottom/left/right: crop the square of side min(H, W) (see ``crop_box``), then
    resize it to size×size. squash: resize the whole image to size×size. pad: resize so that the
    long side is ``size`` (short side round(short·size/long), at least 1), then centre it on a
    size×size canvas of the encoder's mean colour (normalises to zero: the border carries no
    content; offsets rounded down). Sharpening (``sharpen``) is applied to the resized image,
    before padding, so the canvas stays exactly the mean colour. Values are clamped to 0..1.
    """
    image = check_image_batch(image)[..., :3]
    _choice(crop_position, CROP_POSITIONS, "crop_position")
    _choice(interpolation, INTERPOLATIONS, "interpolation")
    if size < 1:
        raise IPAdapterError(f"size: expected a positive number of pixels, got {size}.")
    b, h, w, c = image.shape
    if crop_position == "pad":
        long = max(h, w)
        nh, nw = (size, max(1, round(w * size / long))) if h >= w else (max(1, round(h * size / long)), size)
        inner = sharpen(resize(image, nh, nw, interpolation).clamp(0, 1), sharpening)
        canvas = torch.tensor(mean, dtype=image.dtype, device=image.device).expand(b, size, size, c).clone()
        top, left = (size - nh) // 2, (size - nw) // 2
        canvas[:, top:top + nh, left:left + nw] = inner
        return canvas
    if crop_position != "squash":
        top, left, sh, sw = crop_box(h, w, crop_position)
        image = image[:, top:top + sh, left:left + sw]
    return sharpen(resize(image, size, size, interpolation).clamp(0, 1), sharpening)


def content_seed(image: torch.Tensor) -> int:
    """A seed from the image's content: CRC-32 of its pixels rounded to 8 bits (the same on any
    device, and for float16 and float32 copies of one picture)."""
    q = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    return zlib.crc32(q.numpy().tobytes())


def gaussian_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with a (2·radius + 1)-tap kernel, sigma = 0.3·(radius - 1) + 0.8
    (OpenCV's and torchvision's default sigma for that kernel size), reflected borders."""
    if radius <= 0:
        return image
    x = image.movedim(-1, 1).float()
    r = min(radius, x.shape[-2] - 1, x.shape[-1] - 1)  # reflect padding needs r < side
    if r <= 0:
        return image
    sigma = 0.3 * (radius - 1) + 0.8
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    ch = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(ch, 1, 1, -1), groups=ch)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(ch, 1, -1, 1), groups=ch)
    return x.movedim(1, -1).to(image.dtype)


def noise_negative(image: torch.Tensor | None, kind: str = "fade", strength: float = 1.0, blur: int = 0,
                   seed: int = 0) -> torch.Tensor:
    """A negative image made from the reference (x, 0..1, centre-cropped and resized to 224×224
    bicubic), or from a black 224×224 image when ``image`` is None. U, U' uniform 0..1 noise,
    N standard normal, s = strength:

    fade: (1 - s)·x + s·U. dissolve: each pixel (all channels together) replaced by U' with
    probability s. gaussian: clamp(x + s·N, 0, 1). shuffle: round(s·H·W) pixel positions drawn at
    random exchange their pixels by a random permutation (the pixel multiset is kept).
    Then ``gaussian_blur`` of radius ``blur``. The noise is drawn on the CPU from a generator
    seeded with content_seed(x) + seed, one draw per image: the same inputs give the same image.
    """
    _choice(kind, NOISE_KINDS, "type")
    if not 0.0 <= strength <= 1.0:
        raise IPAdapterError(f"strength: expected 0..1, got {strength}.")
    if blur < 0:
        raise IPAdapterError(f"blur: expected a radius of 0 or more pixels, got {blur}.")
    if image is None:
        x = torch.zeros(1, NEGATIVE_SIZE, NEGATIVE_SIZE, 3)
    else:
        x = prepare_reference(image, NEGATIVE_SIZE, "bicubic", "center").float()
    device, dtype = x.device, x.dtype
    x = x.cpu()
    g = torch.Generator().manual_seed((content_seed(x) + int(seed)) % (2 ** 63))
    b, h, w, c = x.shape
    if kind == "fade":
        y = (1 - strength) * x + strength * torch.rand(x.shape, generator=g)
    elif kind == "dissolve":
        hit = torch.rand(b, h, w, 1, generator=g) < strength
        y = torch.where(hit, torch.rand(x.shape, generator=g), x)
    elif kind == "gaussian":
        y = (x + strength * torch.randn(x.shape, generator=g)).clamp(0, 1)
    else:
        y = x.reshape(b, h * w, c).clone()
        k = round(strength * h * w)
        for i in range(b):
            pos = torch.randperm(h * w, generator=g)[:k]
            y[i, pos] = y[i, pos[torch.randperm(k, generator=g)]]
        y = y.reshape(b, h, w, c)
    return gaussian_blur(y, blur).to(device=device, dtype=dtype)
