"""A random OpenCLIP ViT-H/14 vision encoder file in the layout of the released one
(Hugging Face CLIPVisionModelWithProjection, fp16), for the encode benchmarks: the encode
rate, and encode batches (issue 11: all frames in one encoder call against chunks of
``batch_size``, time and peak memory, each configuration in its own process).

The layout is spelled out here from the architecture (32 layers, width 1280, 16 heads,
MLP 5120, patch 14 at 224 px, projection 1024) rather than taken from ComfyUI's model
classes, so that ``comfy.clip_vision.load`` detecting and loading it strictly is part
of what is exercised. Written once to the bench cache (~1.26 GB).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

from .common import CACHE, collect, rss_bytes, sync

log = logging.getLogger("bench.vision")

LAYERS, WIDTH, MLP, PATCH, IMAGE, PROJ = 32, 1280, 5120, 14, 224, 1024
NAME = "clip-vision-vit-h-random.safetensors"


def vit_h_shapes() -> dict[str, tuple[int, ...]]:
    n_pos = (IMAGE // PATCH) ** 2 + 1  # 256 patches + class token
    shapes = {
        "vision_model.embeddings.class_embedding": (WIDTH,),
        "vision_model.embeddings.patch_embedding.weight": (WIDTH, 3, PATCH, PATCH),  # bias-free conv
        "vision_model.embeddings.position_embedding.weight": (n_pos, WIDTH),
        "vision_model.pre_layrnorm.weight": (WIDTH,),  # sic: HF's spelling
        "vision_model.pre_layrnorm.bias": (WIDTH,),
        "vision_model.post_layernorm.weight": (WIDTH,),
        "vision_model.post_layernorm.bias": (WIDTH,),
        "visual_projection.weight": (PROJ, WIDTH),
    }
    for i in range(LAYERS):
        p = f"vision_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (WIDTH, WIDTH)
            shapes[f"{p}self_attn.{proj}.bias"] = (WIDTH,)
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{ln}.weight"] = (WIDTH,)
            shapes[f"{p}{ln}.bias"] = (WIDTH,)
        shapes[f"{p}mlp.fc1.weight"] = (MLP, WIDTH)
        shapes[f"{p}mlp.fc1.bias"] = (MLP,)
        shapes[f"{p}mlp.fc2.weight"] = (WIDTH, MLP)
        shapes[f"{p}mlp.fc2.bias"] = (WIDTH,)
    return shapes


def _value(key: str, shape) -> torch.Tensor:
    # Norm weights 1 and biases 0 keep activations finite through 32 random layers;
    # other tensors N(0, 0.02), each from its own seed so the file does not depend on order.
    if "norm" in key or "layrnorm" in key:
        return torch.ones(shape) if key.endswith("weight") else torch.zeros(shape)
    if key.endswith("bias"):
        return torch.zeros(shape)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.empty(shape).normal_(0.0, 0.02, generator=g)


def vit_h_file() -> Path:
    path = CACHE / NAME
    if path.is_file():
        return path
    from safetensors.torch import save_file

    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tensors = {k: _value(k, s).to(torch.float16) for k, s in vit_h_shapes().items()}
    tmp = path.with_name(f".{NAME}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote random ViT-H/14 %s (%.2f GB) in %.1f s", path, path.stat().st_size / 1e9,
             time.perf_counter() - t0)
    return path


def load_vit_h():
    """Load through ComfyUI's own loader, which detects ViT-H from the layer count."""
    import comfy.clip_vision

    cv = comfy.clip_vision.load(str(vit_h_file()))
    if cv is None:
        raise RuntimeError("comfy.clip_vision.load did not recognise the random ViT-H file")
    return cv


def encode_rate(clip_vision, n_images: int, size: int = 512, repeats: int = 1) -> dict:
    """Images per second through the extension's encode path (crop, ComfyUI's encode_image,
    and the zero-image features the plus/full-face variants need)."""
    from ipadapter_ext.ip_adapter_core.prompt.vision import encode

    g = torch.Generator().manual_seed(3)
    images = torch.rand(n_images, size, size, 3, generator=g)
    with torch.no_grad():
        encode(clip_vision, images[:1], "center")  # warm-up: loads the model onto its device
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = encode(clip_vision, images, "center")
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {"images": n_images, "size": size, "seconds": best, "images_per_s": n_images / best,
            "penultimate": tuple(out.penultimate_hidden_states.shape)}


# ------------------------------------------------------------------ encode batches (issue 11)
RUN_PY = Path(__file__).resolve().parent / "run.py"
FEATURES = ("image_embeds", "last_hidden_state", "penultimate_hidden_states", "mm_projected")
TOLERANCE = 1e-6  # rtol and atol of the equality check between batch sizes
# Past TOLERANCE, a difference within this fraction of the field's largest |value| is float32
# rounding (eps 1.2e-7, summed in another order for another batch over 32 layers); different
# work (other images, crop, chunk order) differs at 1e-3 and more.
ROUNDING = 1e-5


def frames(n: int, size: int = 512) -> torch.Tensor:
    """``n`` random IMAGE frames [n, size, size, 3] in 0..1; the same in every process."""
    g = torch.Generator().manual_seed(11)
    return torch.rand(n, size, size, 3, generator=g)


def _reset_high_water() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the RSS now (Linux >= 4.0); False where it
    cannot. ru_maxrss never goes down and would still hold the model load's higher peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _high_water() -> int:
    """The kernel's peak RSS of this process in bytes (VmHWM; ru_maxrss where unreadable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def encode_worker(batch_size: int, n_frames: int, size: int, out_dir: Path, device: str) -> None:
    """One configuration, run in a fresh process (``run.py --encode-worker``) so that no earlier
    allocation, allocator pool or high-water mark of another configuration is in its numbers.

    Load, warm up on one frame (moves the model onto its device, caches the zero-image
    features), then time one encode of all frames under the RSS sampler. Peak = highest RSS
    during the encode minus RSS just before it (the frames and the model are in both); the
    kernel's peak-RSS mark, reset just before, checks the sampler.
    Writes result.json and the output's tensor fields (features.pt) to ``out_dir``."""
    from ipadapter_ext.ip_adapter_core.prompt.vision import encode

    from .memory import PeakRSS

    cv = load_vit_h()
    images = frames(n_frames, size)
    digest = hashlib.sha1(images.numpy()).hexdigest()  # buffer protocol: no copy of the frames
    with torch.no_grad():
        encode(cv, images[:1], "center", batch_size=batch_size)
    collect()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        gpu0 = torch.cuda.memory_allocated()
    reset = _reset_high_water()
    rss0, high0 = rss_bytes(), _high_water()
    with PeakRSS() as pk, torch.no_grad():
        t0 = time.perf_counter()
        out = encode(cv, images, "center", batch_size=batch_size)
        sync(device)
        seconds = time.perf_counter() - t0
    high1 = _high_water()
    res = {"batch_size": batch_size, "frames": n_frames, "size": size, "seconds": seconds,
           "images_per_s": n_frames / seconds, "calls": -(-n_frames // (batch_size or n_frames)),
           "rss_before": rss0, "peak_bytes": pk.peak - rss0, "input_sha1": digest,
           # The kernel's mark sees every page, where the sampler may miss a peak shorter than 2 ms;
           # without the reset it is lifetime-wide and bounds the encode's peak only if raised by it.
           "high_water_bytes": high1 - rss0, "high_water_exact": reset or high1 > high0}
    if cuda:
        res["gpu_peak_bytes"] = torch.cuda.max_memory_allocated() - gpu0
    feats = {k: getattr(out, k).cpu() for k in FEATURES if torch.is_tensor(getattr(out, k, None))}
    torch.save(feats, out_dir / "features.pt")
    (out_dir / "result.json").write_text(json.dumps(res))
    log.info("encode batch_size=%d: %d frames in %.1f s (%.3f img/s), peak RSS +%.0f MB",
             batch_size, n_frames, seconds, res["images_per_s"], res["peak_bytes"] / 1e6)


def _spawn(batch_size: int, n_frames: int, size: int, out_dir: Path, device: str, threads: int) -> dict:
    spec = f"{batch_size},{n_frames},{size},{out_dir}"
    subprocess.run([sys.executable, str(RUN_PY), "--encode-worker", spec, "--device", device,
                    "--threads", str(threads)], check=True)
    return json.loads((out_dir / "result.json").read_text())


def compare_features(ref: dict, got: dict) -> dict:
    """Whether two encodes gave the same features: every tensor field, same shapes, then
    torch.equal, else allclose at TOLERANCE, else float rounding (ROUNDING of the field's
    scale), else DIFFERENT. Per field: largest absolute difference and largest |value|."""
    if sorted(ref) != sorted(got) or any(ref[k].shape != got[k].shape for k in ref):
        return {"verdict": "DIFFERENT fields or shapes", "max_abs_diff": float("nan"), "max_rel_diff": float("nan"),
                "fields": {}}
    fields = {k: {"max_abs_diff": (ref[k].double() - got[k].double()).abs().max().item(),
                  "max_abs": ref[k].double().abs().max().item()} for k in sorted(ref)}
    rel = max(f["max_abs_diff"] / max(f["max_abs"], 1e-30) for f in fields.values())
    if all(torch.equal(ref[k], got[k]) for k in ref):
        verdict = "identical"
    elif all(torch.allclose(ref[k], got[k], rtol=TOLERANCE, atol=TOLERANCE) for k in ref):
        verdict = f"allclose {TOLERANCE:g}"
    elif rel <= ROUNDING:
        verdict = f"not allclose {TOLERANCE:g}: float rounding"
    else:
        verdict = "DIFFERENT"
    return {"verdict": verdict, "max_abs_diff": max(f["max_abs_diff"] for f in fields.values()),
            "max_rel_diff": rel, "fields": fields}


def encode_batches_numbers(n_frames: int, batch_sizes, device: str, threads: int, size: int = 512) -> dict:
    """Each batch size in its own process, one after the other; features checked against the first's."""
    vit_h_file()  # written here once, not raced for by the workers
    rows = []
    with tempfile.TemporaryDirectory(prefix="ipadapter-bench-encode-") as tmp:
        for b in batch_sizes:
            out_dir = Path(tmp) / f"b{b}"
            out_dir.mkdir()
            rows.append(_spawn(b, n_frames, size, out_dir, device, threads))
        ref = torch.load(Path(tmp) / f"b{batch_sizes[0]}" / "features.pt")
        for b, row in zip(batch_sizes, rows):
            got = torch.load(Path(tmp) / f"b{b}" / "features.pt")
            row["match"] = compare_features(ref, got)
            if row["input_sha1"] != rows[0]["input_sha1"]:  # never compare different work
                row["match"]["verdict"] = "DIFFERENT inputs"
            del got
    log.info("encode batches: %s", {r["batch_size"]: (round(r["images_per_s"], 3), round(r["peak_bytes"] / 1e6),
                                                       r["match"]["verdict"]) for r in rows})
    return {"frames": n_frames, "size": size, "rows": rows}
