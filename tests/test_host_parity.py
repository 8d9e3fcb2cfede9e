"""End to end: ComfyUI's UNet patched through this extension's nodes equals diffusers' UNet
with diffusers' own IP-Adapter loading, on the same random weights.

One UNet per family (real SD1.5 / SDXL structure and widths, float32) is shared by both hosts: both are
built on meta and assigned the same tensors, the UNet weights of the suite's random full-size checkpoint
(fp16 on disk, read as float32; tests/unet_pairs.py), so SDXL's 10.3 GB are held once. The UNets of a family are built once
(module-scoped, indirectly parametrised fixture) and released before the next family's.
The latent is 16x16 (not 32x32) to keep the run short on 2 shared CPU cores.

diffusers side, as a pipeline runs it: ``IPAdapterMixin.load_ip_adapter`` on the adapter
file (the real method, on an object carrying ``unet`` and ``image_encoder``),
``set_ip_adapter_scale``, the pipeline's own ``prepare_ip_adapter_image_embeds`` /
``encode_image`` for the image features (negative: zeros for linear adapters, the encoder on
an all-zero pixel tensor for plus / full-face), then ``unet(..., added_cond_kwargs=...)``.

Our side, as a workflow runs it: ``load_adapter_handle`` -> ``IPAProject`` -> ``IPAWeight`` ->
``IPAApply``, then ComfyUI's raw UNet forward with ``transformer_options`` built as
``comfy.samplers._calc_cond_batch`` builds them (``cond_or_uncond``, ``sigmas``). The CLIP
features given to IPAProject are the ones diffusers computes (asserted equal).

Both get the same latent, timestep, text context and (SDXL) pooled text / size conditioning;
ComfyUI's SDXL ``y`` is made by ComfyUI's own ``encode_adm``.

FaceID: against a transcription of the original repository's classes, LoRA included
(tests/support/reference_faceid.py), on every layout; and against diffusers' own FaceID loading, which leaves
the LoRA out without PEFT (ours then at lora_strength 0).
"""
from __future__ import annotations

import gc
import logging
import time
import uuid
from dataclasses import dataclass, field

import pytest
import torch

from conftest import rel_err

pytestmark = pytest.mark.host

log = logging.getLogger("ipadapter.tests")

TOL = 1e-4          # relative error of the noise prediction, float32
EFFECT = 1e-2       # the image prompt must move the output far more than TOL
LATENT = 16         # latent height/width (128 px): 32 would be 2-4x slower on 2 shared cores
TIMESTEP = 500.0    # the timestep both UNets get (sigma from ComfyUI's model_sampling)
NEG_POS = (1, 0)    # ComfyUI's cond_or_uncond with CFG: negative chunk first, as diffusers orders it
POS = (0,)          # cfg 1: positive only

SD15_VARIANTS = ("ip-adapter_sd15", "ip-adapter-plus_sd15", "ip-adapter-full-face_sd15")
SDXL_VARIANTS = ("ip-adapter_sdxl_vit-h", "ip-adapter-plus_sdxl_vit-h")


def _layout_id(layout):
    return "cond+uncond" if tuple(layout) == NEG_POS else "cond"


@dataclass
class Pair:
    """One family's UNet in both hosts, the shared inputs, and cached unpatched outputs."""

    family: str
    unet: object                     # diffusers UNet2DConditionModel (owns the weights)
    comfy: object                    # ComfyUI ModelPatcher sharing them
    host: object                     # diffusers IPAdapterMixin host (unet + image encoder)
    pixels: torch.Tensor             # the reference image, normalised [1, 3, 224, 224]
    latent: torch.Tensor             # [1, 4, LATENT, LATENT]
    text: torch.Tensor               # [2, 77, cross] negative, positive
    pooled: torch.Tensor | None      # SDXL [2, 1280] negative, positive
    base: dict = field(default_factory=dict)

    def inputs(self, layout):
        """(x, t, sigma, context, diffusers added_cond_kwargs, ComfyUI y) for a cond_or_uncond
        layout; chunk c uses the negative text when layout[c] == 1, as ComfyUI batches conds."""
        ms = self.comfy.get_model_object("model_sampling")
        sigma = ms.sigma(torch.tensor([TIMESTEP]))          # the sampler's timestep (latent batch)
        n = len(layout)
        t = ms.timestep(torch.cat([sigma] * n)).float()   # what _apply_model gives the UNet
        rows = [1 - code for code in layout]                # text row: 0 negative, 1 positive
        x = torch.cat([self.latent] * n)
        ctx = self.text[rows]
        added, y = {}, None
        if self.family == "sdxl":
            size = LATENT * 8
            pooled = self.pooled[rows]
            # diffusers: time_ids = original_size + crops_coords_top_left + target_size
            added = {"text_embeds": pooled,
                     "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * n, dtype=torch.float32)}
            y = torch.cat([self.comfy.model.encode_adm(pooled_output=p[None], width=size, height=size, crop_w=0,
                                                       crop_h=0, target_width=size, target_height=size)
                           for p in pooled])
        return x, t, sigma, ctx, added, y

    def diffusers_forward(self, layout, image_embeds=None):
        x, t, _, ctx, added, _ = self.inputs(layout)
        if image_embeds is not None:
            added = {**added, "image_embeds": image_embeds}
        with torch.no_grad():
            return self.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added or None).sample

    def comfy_forward(self, model, layout):
        """ComfyUI's raw UNet call with transformer_options as _calc_cond_batch makes them."""
        import comfy.patcher_extension

        x, t, sigma, ctx, _, y = self.inputs(layout)
        to = comfy.patcher_extension.merge_nested_dicts(
            {}, model.model_options.get("transformer_options", {}), copy_dict1=False)
        to["cond_or_uncond"] = list(layout)
        to["uuids"] = [uuid.uuid4() for _ in layout]
        to["sigmas"] = sigma
        with torch.no_grad():
            return model.model.diffusion_model(x, t, context=ctx, y=y, transformer_options=to)

    def unpatched(self, layout):
        """(diffusers, ComfyUI) outputs without IP-Adapter, computed once per layout."""
        key = tuple(layout)
        if key not in self.base:
            assert self.unet.encoder_hid_proj is None, "an IP-Adapter is still loaded in diffusers"
            self.base[key] = (self.diffusers_forward(layout), self.comfy_forward(self.comfy, layout))
        return self.base[key]


@pytest.fixture(scope="module")
def image_encoder():
    from support.unet_pairs import small_clip_vision

    return small_clip_vision()


@pytest.fixture(scope="module")
def pair(request, image_encoder, adapter_file):
    """Indirectly parametrised with the family; pytest finishes one family's Pair before it
    builds the next one's, so at most one pair of UNets is alive."""
    from support import adapter_files
    from support.unet_pairs import comfy_model_sharing, diffusers_ip_host, diffusers_unet, release

    family = request.param
    # Write the adapter files before the UNet exists, then drop adapter_files' cache of their
    # tensors (SDXL's: 0.7 GB each, 2 GB while being drawn) to keep the peak low.
    for variant in {"sd15": SD15_VARIANTS, "sdxl": SDXL_VARIANTS}[family]:
        adapter_file(variant)
    for variant in {"sd15": {v for v, _, _ in SD15_FACEID}, "sdxl": {"ip-adapter-faceid_sdxl"}}[family]:
        adapter_file(variant, "bin")  # SDXL FaceID's LoRA: 1.1 GB drawn, before the UNet's 10.3 GB exist
    adapter_files.forget_sections()
    gc.collect()
    t0 = time.perf_counter()
    unet = diffusers_unet(family)
    comfy = comfy_model_sharing(unet)
    log.info("%s pair ready in %.1fs", family, time.perf_counter() - t0)
    g = torch.Generator().manual_seed(7)
    cross = unet.config.cross_attention_dim
    p = Pair(family, unet, comfy, diffusers_ip_host(family, unet, image_encoder),
             pixels=torch.randn(1, 3, 224, 224, generator=g),
             latent=torch.randn(1, 4, LATENT, LATENT, generator=g),
             text=torch.randn(2, 77, cross, generator=g),
             pooled=torch.randn(2, 1280, generator=g) if family == "sdxl" else None)
    yield p
    release(unet, comfy.model.diffusion_model)
    del p, unet, comfy
    gc.collect()
    log.info("released the %s pair", family)


def features(encoder, pixels):
    """What IP-Adapter Encode Image hands on: ComfyUI's CLIP_VISION_OUTPUT with image_embeds,
    penultimate_hidden_states and the zero-image penultimate states, here from the same
    encoder diffusers' pipeline uses."""
    from comfy.clip_vision import Output

    from ipadapter_ext.ip_adapter_core.prompt.vision import ZERO_IMAGE_ATTR

    out = Output()
    with torch.no_grad():
        out["image_embeds"] = encoder(pixels).image_embeds
        out["penultimate_hidden_states"] = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        out[ZERO_IMAGE_ATTR] = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
    return out


def diffusers_with_adapter(pair: Pair, path, lam, layout):
    """diffusers' noise prediction with the adapter loaded its own way; unloads afterwards.
    Returns (output, image_embeds as the pipeline made them: [negative; positive] features)."""
    host = pair.host
    host.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name, local_files_only=True)
    try:
        host.set_ip_adapter_scale(lam)
        cfg = tuple(layout) == NEG_POS
        with torch.no_grad():
            embeds = host.prepare_ip_adapter_image_embeds(pair.pixels, None, torch.device("cpu"), 1, cfg)
        return pair.diffusers_forward(layout, embeds), embeds
    finally:
        host.unload_ip_adapter()
        gc.collect()


def ours_patched(pair: Pair, path, lam, feats):
    """The model a workflow gets: load -> IPAProject -> IPAWeight -> IPAApply."""
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.nodes.apply import IPAApply
    from ipadapter_ext.nodes.image_prompt import IPAProject
    from ipadapter_ext.nodes.weight import IPAWeight

    handle = load_adapter_handle(path)
    embeds = IPAProject.execute(handle, feats, "concat").result[0]
    embeds = IPAWeight.execute(embeds, lam, "all", "", 0.0, 1.0).result[0]
    return IPAApply.execute(pair.comfy, handle, embeds).result[0]


def check_case(pair: Pair, image_encoder, parity, path, variant, lam, layout):
    t0 = time.perf_counter()
    want, d_embeds = diffusers_with_adapter(pair, path, lam, layout)
    feats = features(image_encoder, pair.pixels)
    # both sides see the same CLIP features: diffusers' last chunk is the positive image,
    # its first (with CFG) the negative: zeros (linear) or the zero-image states (plus/full-face)
    pos = d_embeds[0][-1, 0]
    # exact: the same encoder on the same pixels (and zeros) at batch 1 on both sides
    if pos.ndim == 1:
        assert torch.equal(pos, feats.image_embeds[0])
        if len(layout) == 2:
            assert torch.equal(d_embeds[0][0, 0], torch.zeros_like(pos))
    else:
        from ipadapter_ext.ip_adapter_core.prompt.vision import ZERO_IMAGE_ATTR

        assert torch.equal(pos, feats.penultimate_hidden_states[0])
        if len(layout) == 2:
            assert torch.equal(d_embeds[0][0, 0], getattr(feats, ZERO_IMAGE_ATTR)[0])
    patched = ours_patched(pair, path, lam, feats)
    got = pair.comfy_forward(patched, layout)
    name = f"{pair.family} {variant} λ={lam} {_layout_id(layout)}"
    parity(name, got, want, TOL)
    effect = rel_err(got, pair.unpatched(layout)[1])
    log.info("%s: image prompt moves the output by %.3f (%.1fs)", name, effect, time.perf_counter() - t0)
    assert effect > EFFECT, f"{name}: the adapter barely changes the output ({effect:.2e}); parity proves little"
    del patched
    gc.collect()


# ----------------------------------------------------------------------------- SD1.5

SD15 = pytest.mark.parametrize("pair", ["sd15"], indirect=True, scope="module")


@SD15
@pytest.mark.parametrize("layout", [NEG_POS, POS], ids=_layout_id)
def test_sd15_unpatched_comfyui_equals_diffusers(pair, layout, parity):
    ref, got = pair.unpatched(layout)
    assert got.shape == ref.shape == (len(layout), 4, LATENT, LATENT)
    parity(f"sd15 unpatched {_layout_id(layout)}", got, ref, TOL)


@SD15
@pytest.mark.parametrize("lam", [1.0, 0.5])
@pytest.mark.parametrize("layout", [NEG_POS, POS], ids=_layout_id)
@pytest.mark.parametrize("variant", SD15_VARIANTS)
def test_sd15_adapter_equals_diffusers(pair, image_encoder, adapter_file, parity, variant, layout, lam):
    check_case(pair, image_encoder, parity, adapter_file(variant), variant, lam, layout)


@SD15
def test_sd15_lambda_zero_is_bit_identical(pair, image_encoder, adapter_file):
    path = adapter_file("ip-adapter-plus_sd15")
    patched = ours_patched(pair, path, 0.0, features(image_encoder, pair.pixels))
    assert torch.equal(pair.comfy_forward(patched, NEG_POS), pair.unpatched(NEG_POS)[1])


# ----------------------------------------------------------------------------- SDXL

def SDXL(test):  # noqa: N802 - a decorator, named like SD15
    """SDXL pair; also ``slow``: its 10.3 GB of fp32 weights make each forward seconds long."""
    return pytest.mark.slow(pytest.mark.parametrize("pair", ["sdxl"], indirect=True, scope="module")(test))


@SDXL
def test_sdxl_unpatched_comfyui_equals_diffusers(pair, parity):
    ref, got = pair.unpatched(NEG_POS)
    assert got.shape == ref.shape == (2, 4, LATENT, LATENT)
    parity("sdxl unpatched cond+uncond", got, ref, TOL)


@SDXL
@pytest.mark.parametrize("variant", SDXL_VARIANTS)
def test_sdxl_adapter_equals_diffusers(pair, image_encoder, adapter_file, parity, variant):
    check_case(pair, image_encoder, parity, adapter_file(variant), variant, 1.0, NEG_POS)


# ----------------------------------------------------------------------------- FaceID

# (variant, faces, shortcut): plusv2 runs with the v2 shortcut (s_scale 1.5, to see it count) and without it (v1)
SD15_FACEID = [("ip-adapter-faceid_sd15", 1, False), ("ip-adapter-faceid-plusv2_sd15", 1, True),
               ("ip-adapter-faceid-plusv2_sd15", 1, False), ("ip-adapter-faceid-portrait-v11_sd15", 3, False)]
S_SCALE = 1.5


def faceid_reference(pair: Pair, path, ids, clip, zero_clip, shortcut, lam, layout):
    """The reference's ε: its projection (MLPProjModel / ProjPlusModel) on the file's image_proj, its LoRA and
    IP processors on diffusers' UNet (tests/support/reference_faceid.py), restored afterwards."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from ipadapter_ext.ip_adapter_core.files.formats import read_flat_state_dict, split_sections
    from support.reference_faceid import RefMLPProjModel, RefProjPlusModel, reference_processors

    sections, _ = split_sections(read_flat_state_dict(path))
    proj_sd = {k: v.float() for k, v in sections["image_proj"].items()}
    cross = pair.unet.config.cross_attention_dim
    tokens = proj_sd["proj.2.weight"].shape[0] // cross
    n = ids.shape[0]
    with torch.no_grad():
        if clip is None:
            proj = RefMLPProjModel(cross, 512, tokens)
            proj.load_state_dict(proj_sd)
            pos, neg = proj(ids), proj(torch.zeros_like(ids))
        else:
            proj = RefProjPlusModel(cross, 512, 1280, tokens)
            proj.load_state_dict(proj_sd)
            pos = proj(ids, clip, shortcut=shortcut, scale=S_SCALE)
            neg = proj(torch.zeros_like(ids), zero_clip.expand(n, -1, -1), shortcut=shortcut, scale=S_SCALE)
    # several faces: the portrait reference's n_cond, [1, n·T, C]
    pos, neg = pos.reshape(1, -1, cross), neg.reshape(1, -1, cross)
    rank = next((v.shape[0] for k, v in sections["ip_adapter"].items() if k.endswith("_lora.down.weight")), 128)
    procs = reference_processors(pair.unet, sections, lam, rank)
    rows = torch.cat([neg if code == 1 else pos for code in layout])
    for p in procs.values():
        p.ip_tokens = rows
    pair.unet.set_attn_processor(procs)
    try:
        return pair.diffusers_forward(layout)
    finally:
        pair.unet.set_attn_processor(AttnProcessor2_0())


def faceid_ours(pair: Pair, path, ids, clip, zero_clip, shortcut, lam, layout, lora_strength=1.0, model=None):
    """Our ε as a workflow gets it: the file loaded, the faces projected (prompt/faces.py), IPAWeight, IPAApply
    (which merges the LoRA), the model loaded by ComfyUI's memory manager (weights patched, as a sampler
    loads it), the UNet run, and the patches taken off again."""
    import comfy.model_management as mm

    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt
    from ipadapter_ext.ip_adapter_core.prompt.faces import project_faces
    from ipadapter_ext.nodes.apply import IPAApply
    from ipadapter_ext.nodes.weight import IPAWeight

    handle = load_adapter_handle(path)
    pos, neg = project_faces(handle.model.image_proj, handle.config, ids, clip, zero_clip, "concat",
                             shortcut=shortcut, s_scale=S_SCALE)
    prompt = ImagePrompt(pos, neg, handle.config, str(path), lora_strength=lora_strength)
    embeds = IPAWeight.execute(prompt, lam, "all", "", 0.0, 1.0).result[0]
    patched = IPAApply.execute(pair.comfy if model is None else model, handle, embeds).result[0]
    mm.load_models_gpu([patched])
    try:
        return pair.comfy_forward(patched, layout), handle
    finally:
        mm.unload_all_models()


def faceid_diffusers(pair: Pair, path, ids, clip, zero_clip, shortcut, lam, layout):
    """diffusers' own FaceID support: ``load_ip_adapter`` builds IPAdapterFaceIDImageProjection (faceid, portrait)
    or IPAdapterFaceIDPlusImageProjection (plus: its ``clip_embeds``, ``shortcut`` and ``shortcut_scale`` set as
    its docs say) and its IP processors. Without the LoRA: diffusers loads that through PEFT, which the tests do
    not install (it then warns and leaves it out)."""
    host = pair.host
    host.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name, local_files_only=True)
    try:
        host.set_ip_adapter_scale(lam)

        def rows(pos, neg):  # [layout rows, faces, ...]: the negative where ComfyUI's row is uncond
            return torch.stack([neg if code == 1 else pos for code in layout])

        n = ids.shape[0]
        proj = pair.unet.encoder_hid_proj.image_projection_layers[0]
        if clip is not None:
            proj.clip_embeds = rows(clip, zero_clip.expand(n, -1, -1))
            proj.shortcut, proj.shortcut_scale = shortcut, S_SCALE
        return pair.diffusers_forward(layout, [rows(ids, torch.zeros_like(ids))])
    finally:
        host.unload_ip_adapter()
        gc.collect()


def face_inputs(pair: Pair, image_encoder, variant, faces):
    """(normalised face embeddings [faces, 512], CLIP states of the crops and of zero pixels, or None)."""
    g = torch.Generator().manual_seed(11)
    ids = torch.nn.functional.normalize(torch.randn(faces, 512, generator=g), dim=-1)
    clip = zero_clip = None
    if "plus" in variant:
        with torch.no_grad():
            clip = image_encoder(pair.pixels.expand(faces, -1, -1, -1), output_hidden_states=True).hidden_states[-2]
            zero_clip = image_encoder(torch.zeros_like(pair.pixels), output_hidden_states=True).hidden_states[-2]
    return ids, clip, zero_clip


def check_faceid(pair: Pair, image_encoder, parity, path, variant, faces, shortcut, layout, lam=1.0):
    ids, clip, zero_clip = face_inputs(pair, image_encoder, variant, faces)
    t0 = time.perf_counter()
    want = faceid_reference(pair, path, ids, clip, zero_clip, shortcut, lam, layout)
    got, handle = faceid_ours(pair, path, ids, clip, zero_clip, shortcut, lam, layout)
    name = f"{pair.family} {variant}{' v2' if shortcut else ''} faces={faces} λ={lam} {_layout_id(layout)}"
    parity(name, got, want, TOL)
    effect = rel_err(got, pair.unpatched(layout)[1])
    log.info("%s: FaceID moves the output by %.3f (%.1fs)", name, effect, time.perf_counter() - t0)
    assert effect > EFFECT, f"{name}: the adapter barely changes the output ({effect:.2e}); parity proves little"
    # the patches came off: the shared UNet computes its unpatched output again
    assert torch.equal(pair.comfy_forward(pair.comfy, layout), pair.unpatched(layout)[1]), "a FaceID patch leaked"
    del handle
    gc.collect()


@SD15
@pytest.mark.parametrize("layout", [NEG_POS, POS], ids=_layout_id)
@pytest.mark.parametrize("variant,faces,shortcut", SD15_FACEID, ids=lambda v: str(v))
def test_sd15_faceid_equals_reference(pair, image_encoder, adapter_file, parity, variant, faces, shortcut, layout):
    check_faceid(pair, image_encoder, parity, adapter_file(variant, "bin"), variant, faces, shortcut, layout)


@SD15
@pytest.mark.parametrize("variant,faces,shortcut", SD15_FACEID, ids=lambda v: str(v))
def test_sd15_faceid_equals_diffusers_without_the_lora(pair, image_encoder, adapter_file, parity, variant, faces,
                                                       shortcut):
    """diffusers as a second reference where it covers FaceID: every SD1.5 layout's projection and image
    attention, the LoRA left out on both sides (ours at lora_strength 0; the LoRA is checked against the
    original repository's maths above)."""
    ids, clip, zero_clip = face_inputs(pair, image_encoder, variant, faces)
    path = adapter_file(variant, "bin")
    want = faceid_diffusers(pair, path, ids, clip, zero_clip, shortcut, 0.8, NEG_POS)
    got, _ = faceid_ours(pair, path, ids, clip, zero_clip, shortcut, 0.8, NEG_POS, lora_strength=0.0)
    name = f"sd15 {variant}{' v2' if shortcut else ''} faces={faces} vs diffusers, no LoRA"
    parity(name, got, want, TOL)
    assert rel_err(got, pair.unpatched(NEG_POS)[1]) > EFFECT, f"{name}: the adapter barely changes the output"


@SDXL
def test_sdxl_faceid_equals_reference(pair, image_encoder, adapter_file, parity):
    import psutil

    free = psutil.virtual_memory().available / 2**30
    if free < 6:  # LoRA patch backups + the reference's fp32 LoRA beside the 10.3 GB pair
        pytest.skip(f"SDXL FACEID PARITY SKIPPED: {free:.1f} GB free, needs 6")
    check_faceid(pair, image_encoder, parity, adapter_file("ip-adapter-faceid_sdxl", "bin"),
                 "ip-adapter-faceid_sdxl", 1, False, NEG_POS, lam=0.8)


def kohya_lora(pair: Pair, path) -> dict:
    """The file's LoRA as its separate ``_lora.safetensors`` holds it (kohya ``lora_unet_<diffusers name>`` keys,
    FAMILIES.md §1.2), processor i named by diffusers' ``attn_processors`` order."""
    from ipadapter_ext.ip_adapter_core.files.formats import read_flat_state_dict, split_sections

    ipa = split_sections(read_flat_state_dict(path))[0]["ip_adapter"]
    out = {}
    for i, name in enumerate(pair.unet.attn_processors.keys()):
        base = "lora_unet_" + name[:-len(".processor")].replace(".", "_")
        for proj, module in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out_0")):
            out[f"{base}_{module}.lora_down.weight"] = ipa[f"{i}.{proj}_lora.down.weight"]
            out[f"{base}_{module}.lora_up.weight"] = ipa[f"{i}.{proj}_lora.up.weight"]
    return out


@SD15
def test_sd15_faceid_lora_counts_once(pair, image_encoder, adapter_file, parity):
    """The LoRA matters (strength 0 is far from the reference), and a model that already carries it from the
    separate _lora.safetensors (ComfyUI's own LoRA loader) does not get it twice: still the reference."""
    import comfy.sd

    path = adapter_file("ip-adapter-faceid_sd15", "bin")
    ids = torch.nn.functional.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(11)), dim=-1)
    want = faceid_reference(pair, path, ids, None, None, False, 1.0, NEG_POS)
    without, _ = faceid_ours(pair, path, ids, None, None, False, 1.0, NEG_POS, lora_strength=0.0)
    assert rel_err(without, want) > 100 * TOL, "the LoRA barely changes the output; the parity tests prove little"
    loaded, _ = comfy.sd.load_lora_for_models(pair.comfy, None, kohya_lora(pair, path), 1.0, 0)
    assert len(loaded.patches) == 4 * 32, f"ComfyUI's LoRA loader patched {len(loaded.patches)} weights"
    got, _ = faceid_ours(pair, path, ids, None, None, False, 1.0, NEG_POS, model=loaded)
    parity("sd15 faceid with the separate LoRA loaded first", got, want, TOL)
