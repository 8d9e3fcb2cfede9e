"""The soak test's prompts (tests/test_soak.py), built in Python in ComfyUI's API format: the GOOD
graphs, the BAD cases with the patterns their error must match, and the interleaved schedule."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

SIZE, STEPS, SEED = 64, 2, 1234
CKPT = "sd15_random.safetensors"
BASE, PLUS = "ip-adapter_sd15.safetensors", "ip-adapter-plus_sd15.safetensors"
VIT_G, SDXL = "ip-adapter_sd15_vit-G.safetensors", "ip-adapter_sdxl_vit-h.safetensors"
TRUNCATED, RANDOM_BYTES, EVIL = "soak_truncated.safetensors", "soak_random_bytes.safetensors", "soak_code.bin"
WRONG_EMBEDS = "soak_wrong_shape.ipaembeds"


# ---------------------------------------------------------------- prompts, built in Python (API format)

class Graph:
    """An API-format prompt under construction; ``add`` returns the node's output 0 as a link."""

    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def add(self, class_type: str, **inputs) -> list:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return [node_id, 0]


def out(link: list, slot: int) -> list:
    return [link[0], slot]


IMAGES = {"ref": "soak_reference.png", "second": "soak_forest.png", "mask": "soak_left_half.png"}
SOURCES = {"ref": "ipadapter_reference.png", "second": "ipadapter_forest.png", "mask": "ipadapter_left_half.png"}


class Ctx:
    """The shared start of every prompt: the checkpoint, the base adapter, the ViT-H encoder that
    IPACLIPVisionLoader finds for it, and the encodings of both reference images (the second one is
    unused, so not executed, in most prompts; being in the prompt keeps it in ComfyUI's cache, as
    the nodes of a user's graph stay cached while they change another part of it)."""

    def __init__(self, seed: int = SEED, prefix: str = "", plain: bool = False):
        self.g, self.seed, self.prefix = Graph(), seed, prefix
        self.ckpt = self.g.add("CheckpointLoaderSimple", ckpt_name=CKPT)
        self.model = self.ckpt
        if plain:
            return
        self.base = self.g.add("IPALoader", ipadapter_file=BASE)
        self.clip_vision = self.g.add("IPACLIPVisionLoader", ipadapter=self.base)
        self.image = self.g.add("LoadImage", image=IMAGES["ref"])
        self.features = self.g.add("IPAEncodeImage", clip_vision=self.clip_vision, image=self.image, crop="center")
        second = self.g.add("LoadImage", image=IMAGES["second"])
        self.features2 = self.g.add("IPAEncodeImage", clip_vision=self.clip_vision, image=second, crop="squash")

    def embeds(self, adapter, features=None, weight=1.0, blocks="all", custom=""):
        emb = self.g.add("IPAProject", ipadapter=adapter, image_features=features or self.features, combine="concat")
        return self.g.add("IPAWeight", embeds=emb, weight=weight, blocks=blocks, custom_blocks=custom,
                          start_at=0.0, end_at=1.0)

    def apply(self, adapter, embeds, mask=None):
        inputs = {"model": self.model, "ipadapter": adapter, "embeds": embeds}
        if mask is not None:
            inputs["attn_mask"] = mask
        self.model = self.g.add("IPAApply", **inputs)

    def mask(self):
        return self.g.add("LoadImageMask", image=IMAGES["mask"], channel="red")

    def finish(self) -> dict:
        g = self.g
        pos = g.add("CLIPTextEncode", text="a lighthouse on a cliff", clip=out(self.ckpt, 1))
        neg = g.add("CLIPTextEncode", text="blurry", clip=out(self.ckpt, 1))
        latent = g.add("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
        samples = g.add("KSampler", model=self.model, seed=self.seed, steps=STEPS, cfg=5.0, sampler_name="euler",
                        scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
        decoded = g.add("VAEDecode", samples=samples, vae=out(self.ckpt, 2))
        g.add("SaveImage", images=decoded, filename_prefix=f"soak/{self.prefix}")
        return g.nodes


def plain_prompt() -> dict:
    """No IP-Adapter node at all: checkpoint, text, sampler, decoder."""
    return Ctx(prefix="plain", plain=True).finish()


def good_base(c: Ctx):
    c.apply(c.base, c.embeds(c.base))


def good_plus(c: Ctx):
    plus = c.g.add("IPALoader", ipadapter_file=PLUS)
    c.apply(plus, c.embeds(plus, weight=0.8))


def good_two_adapters(c: Ctx):
    c.apply(c.base, c.embeds(c.base, weight=0.7))
    plus = c.g.add("IPALoader", ipadapter_file=PLUS)
    c.apply(plus, c.embeds(plus, c.features2, weight=0.6))


def good_attn_mask(c: Ctx):
    c.apply(c.base, c.embeds(c.base), mask=c.mask())


def good_lambda_zero(c: Ctx):
    c.apply(c.base, c.embeds(c.base, weight=0.0))


def good_all_in_one(c: Ctx):
    c.model = c.g.add("IPAApplySimple", model=c.model, ipadapter=c.base, clip_vision=c.clip_vision,
                      image=c.image, weight=0.9, start_at=0.0, end_at=1.0)


GOOD = {f.__name__[5:]: f for f in (good_base, good_plus, good_two_adapters, good_attn_mask, good_lambda_zero,
                                     good_all_in_one)}


@dataclass
class Bad:
    build: object                      # (Ctx) -> None
    expect: tuple[str, ...]            # regexes (case-insensitive), all must be found in the error text
    results: list = field(default_factory=list)


def _adapter_file(name):
    def build(c: Ctx):
        ipa = c.g.add("IPALoader", ipadapter_file=name)
        c.apply(ipa, c.embeds(ipa))
    return build


def _weight(value, all_in_one=False):
    def build(c: Ctx):
        if all_in_one:
            c.model = c.g.add("IPAApplySimple", model=c.model, ipadapter=c.base, clip_vision=c.clip_vision,
                              image=c.image, weight=value, start_at=0.0, end_at=1.0)
        else:
            c.apply(c.base, c.embeds(c.base, weight=value))
    return build


def _custom_blocks(text):
    def build(c: Ctx):
        c.apply(c.base, c.embeds(c.base, blocks="custom", custom=text))
    return build


def bad_wrong_encoder_project(c: Ctx):
    """ViT-bigG adapter fed ViT-H features through Encode Image -> Project."""
    vit_g = c.g.add("IPALoader", ipadapter_file=VIT_G)
    c.apply(vit_g, c.embeds(vit_g))


def bad_wrong_encoder_all_in_one(c: Ctx):
    vit_g = c.g.add("IPALoader", ipadapter_file=VIT_G)
    c.model = c.g.add("IPAApplySimple", model=c.model, ipadapter=vit_g, clip_vision=c.clip_vision, image=c.image,
                      weight=1.0, start_at=0.0, end_at=1.0)


def bad_wrong_encoder_loader(c: Ctx):
    """IPACLIPVisionLoader asked for ViT-bigG, which models/clip_vision does not hold."""
    vit_g = c.g.add("IPALoader", ipadapter_file=VIT_G)
    cv = c.g.add("IPACLIPVisionLoader", ipadapter=vit_g)
    feats = c.g.add("IPAEncodeImage", clip_vision=cv, image=c.image, crop="center")
    c.apply(vit_g, c.embeds(vit_g, feats))


def bad_sdxl_adapter(c: Ctx):
    sdxl = c.g.add("IPALoader", ipadapter_file=SDXL)
    c.apply(sdxl, c.embeds(sdxl))


def bad_mask_batch(c: Ctx):
    """A 2-mask batch for a latent batch of 1."""
    as_image = c.g.add("MaskToImage", mask=c.mask())
    two = c.g.add("RepeatImageBatch", image=as_image, amount=2)
    c.apply(c.base, c.embeds(c.base), mask=c.g.add("ImageToMask", image=two, channel="red"))


def bad_embeds_file(name):
    def build(c: Ctx):
        c.apply(c.base, c.g.add("IPALoadEmbeds", embeds_file=name))
    return build


def bad_image_traversal(c: Ctx):
    image = c.g.add("LoadImage", image="../../../etc/hostname")
    feats = c.g.add("IPAEncodeImage", clip_vision=c.clip_vision, image=image, crop="center")
    c.apply(c.base, c.embeds(c.base, feats))


FILE_NAMED = r"ipadapter_file|IP-Adapter file"  # the loader's one input, or its file named as such
# name -> how to build it, and the patterns its error must match (input or file named; what to do)
BAD = {
    "wrong encoder (ViT-bigG adapter, ViT-H features)":
        Bad(bad_wrong_encoder_project, (r"image_features|clip_vision", r"ViT-bigG", r"load the ViT-bigG")),
    "wrong encoder (all-in-one, ViT-bigG adapter + ViT-H)":
        Bad(bad_wrong_encoder_all_in_one, (r"clip_vision", r"ViT-bigG", r"load the ViT-bigG")),
    "wrong encoder (CLIP vision loader, no ViT-bigG file)":
        Bad(bad_wrong_encoder_loader, (r"clip_vision", r"ViT-bigG", r"models/clip_vision")),
    "SDXL adapter on the SD1.5 model": Bad(bad_sdxl_adapter, (r"ipadapter", r"SDXL", r"SD1\.5", r"use an")),
    "custom_blocks 'input 99 = 1'":
        Bad(_custom_blocks("input 99 = 1"), (r"custom_blocks", r"input 99", r"valid blocks")),
    "custom_blocks 'garbage'": Bad(_custom_blocks("garbage"), (r"custom_blocks", r"garbage", r"entries like")),
    "attn_mask batch 2, latent batch 1": Bad(bad_mask_batch, (r"attn_mask", r"\b2\b", r"\b1\b", r"batch")),
    "truncated adapter file": Bad(_adapter_file(TRUNCATED), (FILE_NAMED, re.escape(TRUNCATED), r"download")),
    "random-bytes adapter file":
        Bad(_adapter_file(RANDOM_BYTES), (FILE_NAMED, re.escape(RANDOM_BYTES), r"download")),
    ".bin whose pickle runs code":
        Bad(_adapter_file(EVIL), (FILE_NAMED, re.escape(EVIL), r"without being executed", r"safetensors")),
    "missing adapter file name":
        Bad(_adapter_file("soak_missing.safetensors"), (r"ipadapter_file", r"soak_missing", r"models/ipadapter")),
    ".ipaembeds with wrong tensor shapes":
        Bad(bad_embeds_file(WRONG_EMBEDS),
            (r"embeds_file|embeds file", re.escape(WRONG_EMBEDS), r"shape|width", r"Save Embeds")),
    "path traversal ipadapter_file='../../etc/passwd'":
        Bad(_adapter_file("../../etc/passwd"), (r"ipadapter_file", r"\.\./\.\./etc/passwd", r"not in")),
    "path traversal LoadImage image='../../../etc/hostname'":
        Bad(bad_image_traversal, (r"\bimage\b", r"etc/hostname", r"invalid image file")),
    "path traversal embeds_file='../x.ipaembeds'":
        Bad(bad_embeds_file("../x.ipaembeds"), (r"embeds_file", r"\.\./x\.ipaembeds", r"not in")),
    "weight 1e9 (IPAWeight)": Bad(_weight(1e9), (r"\bweight\b", r"bigger than max")),
    "weight -1e9 (all-in-one)": Bad(_weight(-1e9, all_in_one=True), (r"\bweight\b", r"smaller than min")),
    "weight NaN (IPAWeight)": Bad(_weight(float("nan")), (r"\bweight\b", r"nan|finite")),
}


def schedule(rounds: int) -> list[tuple[int, str, str]]:
    """(round, 'good' | 'bad', name): each good prompt followed by its share of bad ones; both lists
    rotate every round."""
    goods, bads = list(GOOD), list(BAD)
    per = math.ceil(len(bads) / len(goods))
    out_ = []
    for r in range(rounds):
        g = goods[r % len(goods):] + goods[:r % len(goods)]
        shift = (5 * r) % len(bads)
        b = bads[shift:] + bads[:shift]
        for i, name in enumerate(g):
            out_.append((r, "good", name))
            out_ += [(r, "bad", n) for n in b[i * per:(i + 1) * per]]
    return out_


def build(kind: str, name: str, seed: int = SEED) -> dict:
    c = Ctx(seed, name if kind == "good" else "bad")
    (GOOD[name] if kind == "good" else BAD[name].build)(c)
    return c.finish()
