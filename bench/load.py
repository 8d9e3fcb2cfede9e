"""Load times: each SD1.5 adapter in each file format through load_adapter_handle, and
the image encoder (load, then images per second through the extension's encode path).

Files are read once before timing, so the numbers are warm page cache: what a user
sees on the second queue of a workflow, and free of disk noise on a shared machine.
"""
from __future__ import annotations

import logging
import time

from .common import collect, median
from .models import VARIANTS, adapter_path

log = logging.getLogger("bench.load")

FORMATS = ("safetensors", "bin")


def adapter_load_times(repeats: int) -> list[dict]:
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle

    rows = []
    for tokens, variant in VARIANTS.items():
        for fmt in FORMATS:
            path = adapter_path(variant, fmt)
            load_adapter_handle(path)  # warm the page cache and the import paths
            times, touch = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                h = load_adapter_handle(path)
                t1 = time.perf_counter()
                _touch(h.model)
                touch.append(time.perf_counter() - t1)
                times.append(t1 - t0)
                del h
            collect()
            mb = path.stat().st_size / 1e6
            rows.append({"variant": variant, "tokens": tokens, "format": fmt, "mb": mb,
                         "seconds": median(times), "touch_s": median(touch),
                         "mb_per_s": mb / (median(times) + median(touch))})
            log.info("load %s.%s: %.3f s (%.0f MB)", variant, fmt, median(times), mb)
    return rows


def _touch(module) -> None:
    """Read one element per 2 KB of every weight: pages in whatever the loader left
    file-mapped, at almost no arithmetic."""
    import torch

    with torch.no_grad():
        for t in module.state_dict().values():
            t.reshape(-1)[:: max(1, 2048 // t.element_size())].float().sum()


def encoder_numbers(n_images: int) -> dict:
    """ViT-H/14: file load time, encode rate, and the one-time zero-image pass."""
    from ipadapter_ext.ip_adapter_core.prompt.vision import zero_image_features

    from .vision import encode_rate, load_vit_h, vit_h_file

    vit_h_file()  # written once (~10 s); not part of the load time
    t0 = time.perf_counter()
    cv = load_vit_h()
    load_s = time.perf_counter() - t0
    # The zero-image features are computed once per encoder and cached (loader): time the
    # first pass on the fresh encoder, before encode_rate's warm-up fills the cache.
    t0 = time.perf_counter()
    zero_image_features(cv)
    zero_s = time.perf_counter() - t0
    rate = encode_rate(cv, n_images)
    log.info("ViT-H: load %.1f s, %d images in %.1f s (%.2f img/s), zero-image pass %.2f s",
             load_s, n_images, rate["seconds"], rate["images_per_s"], zero_s)
    del cv
    collect()
    return {"load_s": load_s, "zero_image_s": zero_s, **rate}
