"""Helpers of scripts/train_ipadapter.py: the data (a folder or a JSONL file), a deterministic
sample stream sharded over ranks, per-sample random generators, and tiny random models of the
real SD1.5 / SDXL structures (--tiny-random, for tests and CI).

Data order and randomness depend only on (seed, position in the sample stream), never on the
number of processes: the stream is one shuffled pass over the data per epoch (the permutation is
seeded by (seed, epoch)), optimizer step s of a run with global batch G reads positions
[s·G, (s+1)·G), and rank r of W at per-rank batch B reads the r-th B of each micro-batch of B·W.
Every sample's noise, timestep, VAE draw and drop draw come from a generator seeded by
(seed, position), so 8 ranks at batch 4 see what 1 process at batch 32 sees, and a resumed run
continues the stream where the checkpoint left it."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("train_ipadapter")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_items(data) -> list[tuple[str, str]]:
    """[(image path, caption)] from a folder (image files with same-name .txt captions, sorted by
    name) or a JSONL file of {"image": path, "text": caption} (paths relative to the file)."""
    data = Path(data)
    items = []
    if data.is_dir():
        images = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        missing = [p.name for p in images if not p.with_suffix(".txt").is_file()]
        if missing:
            log.warning("%d images without a .txt caption are skipped (first: %s)", len(missing), missing[0])
        items = [(str(p), p.with_suffix(".txt").read_text(encoding="utf-8").strip())
                 for p in images if p.with_suffix(".txt").is_file()]
    elif data.is_file():
        with open(data, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                image = row.get("image", row.get("image_file"))
                if image is None or "text" not in row:
                    raise ValueError(f'{data}:{n}: expected {{"image": path, "text": caption}}; '
                                     f"got keys {sorted(row)}")
                items.append((str((data.parent / image).resolve()), str(row["text"])))
    else:
        raise FileNotFoundError(f"--data {data}: neither a folder nor a JSONL file")
    if not items:
        raise ValueError(f"--data {data}: no images with captions found")
    return items


def mix(*ints: int) -> int:
    """A 32-bit seed from integers (numpy's SeedSequence hash; torch's CPU generator keeps 32 bits)."""
    return int(np.random.SeedSequence([int(i) for i in ints]).generate_state(1)[0])


def sample_generator(seed: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix(seed, 1, position))


class StreamDataset(torch.utils.data.Dataset):
    """Item ``p`` is stream position p: the image perm(epoch)[p mod N], preprocessed for the VAE
    (shortest side resized to the resolution, bilinear, centre crop, [-1, 1]) and for CLIP (the
    encoder's CLIPImageProcessor), with SDXL's size conditioning (original h, w; crop top, left;
    target h, w) as the reference computes it."""

    def __init__(self, items, resolution: int, clip_processor, seed: int):
        self.items, self.resolution, self.clip_processor, self.seed = items, resolution, clip_processor, seed
        self._perm = (None, None)

    def __len__(self):
        return len(self.items)

    def index(self, position: int) -> int:
        epoch, k = divmod(position, len(self.items))
        if self._perm[0] != epoch:
            g = torch.Generator().manual_seed(mix(self.seed, 0, epoch))
            self._perm = (epoch, torch.randperm(len(self.items), generator=g))
        return int(self._perm[1][k])

    def __getitem__(self, position: int) -> dict:
        from PIL import Image

        path, text = self.items[self.index(position)]
        with Image.open(path) as im:
            image = im.convert("RGB")
        w, h = image.size
        r = self.resolution
        s = r / min(w, h)
        nw, nh = max(r, int(w * s)), max(r, int(h * s))
        top, left = (nh - r) // 2, (nw - r) // 2
        crop = image.resize((nw, nh), Image.BILINEAR).crop((left, top, left + r, top + r))
        pixels = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()
        clip = self.clip_processor(images=image, return_tensors="pt").pixel_values[0]
        return {"pixels": pixels, "clip": clip, "text": text, "position": position,
                "time_ids": torch.tensor([h, w, top, left, r, r], dtype=torch.float32)}


def collate(rows: list[dict]) -> dict:
    return {"pixels": torch.stack([r["pixels"] for r in rows]), "clip": torch.stack([r["clip"] for r in rows]),
            "text": [r["text"] for r in rows], "position": [r["position"] for r in rows],
            "time_ids": torch.stack([r["time_ids"] for r in rows])}


class StreamBatches(torch.utils.data.Sampler):
    """This rank's micro-batches: positions start + i·B·W + r·B + [0, B) for i in [0, count)."""

    def __init__(self, start: int, count: int, per_rank: int, world: int, rank: int):
        self.start, self.count, self.per_rank, self.world, self.rank = start, count, per_rank, world, rank

    def __len__(self):
        return self.count

    def __iter__(self):
        for i in range(self.count):
            base = self.start + (i * self.world + self.rank) * self.per_rank
            yield list(range(base, base + self.per_rank))


# ---- tiny random models of the real structures (--tiny-random) ------------------------------------

def tiny_unet_config(family: str, resolution: int) -> dict:
    """diffusers UNet configs of SD1.5's / SDXL's structure (same blocks and attn2 layers, in
    file order) at a tenth of the width (tests/unet_configs.py: sd15_config(10))."""
    if family == "sd15":
        ch = (32, 64, 128, 128)
        return dict(sample_size=resolution // 8, in_channels=4, out_channels=4, layers_per_block=2,
                    block_out_channels=ch, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=16,
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    ch = (32, 64, 128)
    return dict(sample_size=resolution // 8, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=ch, cross_attention_dim=2048, transformer_layers_per_block=[1, 2, 10],
                attention_head_dim=[c // 32 for c in ch], use_linear_projection=True, norm_num_groups=16,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))


def _byte_unicode() -> list[str]:
    """The 256 characters byte-level BPE maps bytes to (GPT-2 / CLIP)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_tokenizer():
    """A real CLIPTokenizer with a byte-level vocabulary (no merges): 514 tokens, 77 positions."""
    from transformers import CLIPTokenizer

    chars = _byte_unicode()
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    with tempfile.TemporaryDirectory() as d:
        Path(d, "vocab.json").write_text(json.dumps(vocab))
        Path(d, "merges.txt").write_text("#version: 0.2\n")
        Path(d, "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
        return CLIPTokenizer.from_pretrained(d)


def tiny_models(family: str, resolution: int) -> dict:
    """Random models of the real interfaces, fixed seeds: UNet (above), a 4-level AutoencoderKL
    (downscale 8), CLIP text encoder(s) of widths 768 (+ 1280 with a 1280 projection for SDXL),
    a CLIP vision encoder of ViT-H/14's widths (1280 hidden, 1024 projection, 257 tokens at 224)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                              CLIPVisionConfig, CLIPVisionModelWithProjection)

    tok = tiny_tokenizer()

    def text_config(hidden):
        return CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=hidden // 64, max_position_embeddings=77, projection_dim=hidden,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**tiny_unet_config(family, resolution))
        torch.manual_seed(1)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 16, 16, 16),
                            layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=resolution,
                            scaling_factor=0.18215 if family == "sd15" else 0.13025)
        torch.manual_seed(2)
        encoders = [CLIPTextModel(text_config(768))]
        if family == "sdxl":
            torch.manual_seed(3)
            encoders.append(CLIPTextModelWithProjection(text_config(1280)))
        torch.manual_seed(4)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
            image_size=224, patch_size=14, projection_dim=1024))
    return dict(unet=unet, vae=vae, tokenizers=[tok] * len(encoders), text_encoders=encoders,
                image_encoder=image_encoder, clip_processor=CLIPImageProcessor())


def pretrained_models(folder, image_encoder_folder) -> dict:
    """A diffusers model folder (unet, vae, text_encoder[_2], tokenizer[_2]) and a CLIP vision folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (CLIPImageProcessor, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer,
                              CLIPVisionModelWithProjection)

    folder = Path(folder)
    sdxl = (folder / "text_encoder_2").is_dir()
    tokenizers = [CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")]
    encoders = [CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")]
    if sdxl:
        tokenizers.append(CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2"))
        encoders.append(CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2"))
    if image_encoder_folder is None:
        raise ValueError("--image-encoder is required with --pretrained (a CLIP vision folder: ViT-H/14 or bigG/14)")
    has_processor = os.path.isfile(os.path.join(image_encoder_folder, "preprocessor_config.json"))
    processor = CLIPImageProcessor.from_pretrained(image_encoder_folder) if has_processor else CLIPImageProcessor()
    return dict(unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
                vae=AutoencoderKL.from_pretrained(folder, subfolder="vae"), tokenizers=tokenizers,
                text_encoders=encoders, clip_processor=processor,
                image_encoder=CLIPVisionModelWithProjection.from_pretrained(image_encoder_folder))


def scheduler_betas(folder) -> dict:
    """beta_start / beta_end / steps of the model's DDPM schedule (SD's scaled-linear by default);
    refuses what the core's ε-prediction noising does not describe."""
    path = Path(folder, "scheduler", "scheduler_config.json") if folder else None
    cfg = json.loads(path.read_text()) if path and path.is_file() else {}
    schedule, prediction = cfg.get("beta_schedule", "scaled_linear"), cfg.get("prediction_type", "epsilon")
    if (schedule, prediction) != ("scaled_linear", "epsilon"):
        raise ValueError(f"{path}: only scaled_linear betas with epsilon prediction (SD1.5, SDXL) are supported; "
                         f"got {schedule} / {prediction}")
    return dict(steps=cfg.get("num_train_timesteps", 1000), beta_start=cfg.get("beta_start", 0.00085),
                beta_end=cfg.get("beta_end", 0.012))
