"""Flux in the real host: XLabs' IP-Adapter through ComfyUI's sampler equals diffusers' Flux with its own
``load_ip_adapter``, on the same random weights of a small Flux.1 (ComfyUI's class, tests/support/flux_models.py).

One sampling step (euler, sigma 0.7 -> 0) through ``comfy.sample.sample_custom`` gives the model's velocity
prediction back exactly (denoised = x - sigma·v, and the step lands on denoised); CFG > 1 runs the positive and
negative rows in one batch. diffusers' side, as its pipeline runs: ``FluxIPAdapterMixin.load_ip_adapter`` on the
same file, ``set_ip_adapter_scale``, then the transformer on the packed latent with ``ip_adapter_image_embeds``
(the negative rows: a black image's embeds, as ``FluxPipeline`` uses with true CFG), combined as CFG combines.
"""
from __future__ import annotations

import pytest
import torch

from conftest import assert_close_reordered, rel_err
from support.flux_models import (CLIP_EMBEDS, CONTEXT, SIGLIP_POOLED, comfy_flux, diffusers_ip_sections, diffusers_twin,
                                 write_instantx, write_xlabs, xlabs_state_dict)

pytestmark = pytest.mark.host

TOL = 1e-4
EFFECT = 1e-2
SIGMA = 0.7
GUIDANCE = 3.5
LATENT = 16       # latent side: 8x8 image tokens of 2x2 patches
TEXT = 8          # text tokens


@pytest.fixture(scope="module")
def flux():
    return comfy_flux(double=2, single=1, heads=2, seed=0)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return dict(noise=torch.randn(1, 16, LATENT, LATENT, generator=g),
                latent=torch.randn(1, 16, LATENT, LATENT, generator=g),
                text=torch.randn(2, TEXT, CONTEXT, generator=g), pooled=torch.randn(2, CLIP_EMBEDS, generator=g),
                embeds=torch.randn(2, CLIP_EMBEDS, generator=g), black=torch.randn(1, CLIP_EMBEDS, generator=g))


@pytest.fixture(scope="module")
def xlabs_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("flux_adapters")
    return {v: write_xlabs(d / f"xlabs_{v}.safetensors", v, double=2, hidden=256, seed=i)
            for i, v in enumerate(("v1", "v2"))}


def conds(inputs, row):
    return [[inputs["text"][row:row + 1], {"pooled_output": inputs["pooled"][row:row + 1], "guidance": GUIDANCE}]]


def velocity(model, inputs, cfg=1.0, noise=None):
    """The model's velocity at sigma 0.7 through ComfyUI's sampler (one euler step to 0 lands on denoised),
    from a latent that is not all zero (ComfyUI would not scale an empty latent in)."""
    import comfy.sample
    import comfy.samplers

    noise = inputs["noise"] if noise is None else noise
    latent = inputs["latent"].expand_as(noise)
    out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object("euler"),
                                     torch.tensor([SIGMA, 0.0]), conds(inputs, 0), conds(inputs, 1), latent,
                                     disable_pbar=True, seed=0)
    fmt = model.model.latent_format
    x = SIGMA * noise + (1 - SIGMA) * fmt.process_in(latent)
    return (x - fmt.process_in(out)) / SIGMA, x


def prompt_of(handle, inputs, image=0, **weighting):
    import comfy.clip_vision

    from ipadapter_ext.ip_adapter_core.prompt.vision import BLACK_IMAGE_ATTR, image_prompt

    feats = comfy.clip_vision.Output()
    feats["image_embeds"] = inputs["embeds"][image:image + 1]
    feats[BLACK_IMAGE_ATTR] = inputs["black"]
    p = image_prompt(handle, feats)
    return p.weighted(**{"weight": 1.0, **weighting})


def applied(model, handle, prompt, mask=None):
    from ipadapter_ext.ip_adapter_core.apply.image_prompt import apply_image_prompt

    return apply_image_prompt(model, handle, prompt, mask)


class DiffusersFlux:
    """diffusers' side: the twin transformer with diffusers' own Flux IP-Adapter loading."""

    def __init__(self, flux, files):
        from diffusers.loaders.ip_adapter import FluxIPAdapterMixin

        class Host(FluxIPAdapterMixin):
            pass

        self.host = Host()
        self.host.transformer = diffusers_twin(flux)
        self.host.load_ip_adapter([str(f.parent) for f in files], subfolder=[""] * len(files),
                                  weight_name=[f.name for f in files], image_encoder_folder=None)

    def velocity(self, x, inputs, row, embeds, scale):
        """v for one row of conds; ``embeds``: one [1, 768] per loaded adapter."""
        from einops import rearrange

        self.host.set_ip_adapter_scale(scale)
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        ids = torch.zeros(h, w, 3)
        ids[..., 1] = torch.arange(h)[:, None]
        ids[..., 2] = torch.arange(w)[None]
        with torch.no_grad():
            out = self.host.transformer(
                hidden_states=rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2),
                encoder_hidden_states=inputs["text"][row:row + 1], pooled_projections=inputs["pooled"][row:row + 1],
                timestep=torch.tensor([SIGMA]), img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(TEXT, 3),
                guidance=torch.tensor([GUIDANCE]), return_dict=False,
                joint_attention_kwargs={"ip_adapter_image_embeds": [e[:, None] for e in embeds]})[0]
        return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h, w=w, ph=2, pw=2)


@pytest.fixture(scope="module")
def handles(xlabs_files):
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle

    return {v: load_adapter_handle(p) for v, p in xlabs_files.items()}


@pytest.mark.parametrize("cfg", [1.0, 3.0], ids=["cond", "cond+uncond"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_xlabs_equals_diffusers(flux, inputs, xlabs_files, handles, parity, version, cfg):
    lam = 0.8
    model = applied(flux, handles[version], prompt_of(handles[version], inputs, weight=lam))
    ours, x = velocity(model, inputs, cfg)
    base, _ = velocity(flux, inputs, cfg)
    ref = DiffusersFlux(flux, [xlabs_files[version]])
    v_pos = ref.velocity(x, inputs, 0, [inputs["embeds"][:1]], lam)
    want = v_pos
    if cfg != 1.0:
        v_neg = ref.velocity(x, inputs, 1, [inputs["black"]], lam)
        want = v_neg + cfg * (v_pos - v_neg)
    parity(f"flux xlabs {version}, λ {lam}, {'cond+uncond' if cfg != 1 else 'cond'}", ours, want, TOL)
    assert rel_err(ours, base) > EFFECT


def test_two_chained_prompts_equal_diffusers_with_two_adapters(flux, inputs, xlabs_files, handles, parity):
    """v1 and v2 applied one after the other: one patch per block holds both; diffusers loads both files."""
    from ipadapter_ext.ip_adapter_core.apply.flux_patch import FluxBlockPatch

    model = applied(flux, handles["v1"], prompt_of(handles["v1"], inputs, 0, weight=0.7))
    model = applied(model, handles["v2"], prompt_of(handles["v2"], inputs, 1, weight=0.5))
    dit = model.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", 0), ("double_block", 1)}
    assert all(isinstance(p, FluxBlockPatch) and len(p.branches) == 2 for p in dit.values())
    # one run-state wrapper and one call wrapper, however many Apply nodes are chained
    assert {kind: len(by_key["ipadapter"]) for kind, by_key in model.wrappers.items()} == \
        {"outer_sample": 1, "diffusion_model": 1}
    ours, x = velocity(model, inputs)
    ref = DiffusersFlux(flux, [xlabs_files["v1"], xlabs_files["v2"]])
    want = ref.velocity(x, inputs, 0, [inputs["embeds"][:1], inputs["embeds"][1:2]], [0.7, 0.5])
    parity("flux xlabs v1 + v2 chained", ours, want, TOL)


def test_custom_blocks_equal_diffusers_per_block_scales(flux, inputs, xlabs_files, handles, parity):
    prompt = prompt_of(handles["v2"], inputs, weight=0.8, blocks="custom", custom="double 0 = 1, double 1 = 0.25")
    ours, x = velocity(applied(flux, handles["v2"], prompt), inputs)
    ref = DiffusersFlux(flux, [xlabs_files["v2"]])
    parity("flux xlabs v2, per-block λ", ours, ref.velocity(x, inputs, 0, [inputs["embeds"][:1]], [0.8, 0.2]), TOL)


def test_lambda_zero_and_outside_the_range_leave_the_model_bit_for_bit(flux, inputs, handles):
    base, _ = velocity(flux, inputs, 3.0)
    h = handles["v2"]
    # Flux shifts its schedule (1.15): start_at 0.8 is sigma 0.44, below this step's 0.7
    for weighting in (dict(weight=0.0), dict(start_at=0.8), dict(blocks="custom", custom="double 0-1 = 0")):
        model = applied(flux, h, prompt_of(h, inputs, **weighting))
        ours, _ = velocity(model, inputs, 3.0)
        assert torch.equal(ours, base), weighting


def test_a_lambda_schedule_acts_on_flux(flux, inputs, handles):
    """λ looked up per step on the device (schedules.py) on Flux's blocks: in a one-step run a linear schedule
    from 0.8 is λ 0.8 at that step (the same prompt as a constant 0.8, through the schedule's path), and a
    schedule starting at 0 changes nothing at it."""
    from ipadapter_ext.ip_adapter_core.prompt.schedules import make_schedule

    h = handles["v2"]
    constant, _ = velocity(applied(flux, h, prompt_of(h, inputs, weight=0.8)), inputs, 3.0)
    scheduled = prompt_of(h, inputs, weight=0.8).scheduled(make_schedule("linear", 0.0, ""))
    assert scheduled.time_varying()
    ours, _ = velocity(applied(flux, h, scheduled), inputs, 3.0)
    assert_close_reordered(ours, constant, "linear schedule at its first step")
    from_zero = prompt_of(h, inputs, weight=0.0).scheduled(make_schedule("linear", 1.0, ""))
    base, _ = velocity(flux, inputs, 3.0)
    ours, _ = velocity(applied(flux, h, from_zero), inputs, 3.0)
    assert torch.equal(ours, base)


def test_the_model_is_not_changed_and_the_adapter_follows_it(flux, inputs, handles):
    """Applying returns a clone: the model given keeps no patch; the clone's patches list the adapter's
    ModelPatcher for ComfyUI's memory manager."""
    h = handles["v1"]
    model = applied(flux, h, prompt_of(h, inputs))
    assert not flux.model_options.get("transformer_options", {}).get("patches_replace")
    dit = model.model_options["transformer_options"]["patches_replace"]["dit"]
    assert all(p.models() == [h.patcher] for p in dit.values())


def test_a_mask_limits_the_prompt_to_its_region(inputs, tmp_path):
    """On a Flux of one double block and no single block, each image token's output depends on its own
    hidden state after that block: tokens outside the mask come out as without the image prompt."""
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle

    small = comfy_flux(double=1, single=0, heads=2, seed=3)
    h = load_adapter_handle(write_xlabs(tmp_path / "one_block.safetensors", "v1", double=1, hidden=256))
    mask = torch.zeros(1, LATENT * 8, LATENT * 8)
    mask[:, :, : LATENT * 4] = 1.0                      # the left half of the picture
    prompt = prompt_of(h, inputs, weight=1.0)
    base, _ = velocity(small, inputs)
    masked, _ = velocity(applied(small, h, prompt, mask), inputs)
    whole, _ = velocity(applied(small, h, prompt), inputs)
    left, right = (..., slice(0, LATENT // 2 - 2)), (..., slice(LATENT // 2 + 2, None))  # off the mask's edge
    assert torch.equal(masked[right], base[right])
    assert rel_err(masked[left], base[left]) > EFFECT
    assert_close_reordered(masked[left], whole[left], "inside the mask")


def test_one_prompt_per_frame_equals_each_frame_alone(flux, inputs, handles):
    """A latent batch of two frames with a prompt projected one per frame: frame i gets image i."""
    import comfy.clip_vision

    from ipadapter_ext.ip_adapter_core.prompt.vision import BLACK_IMAGE_ATTR, image_prompt

    h = handles["v2"]
    feats = comfy.clip_vision.Output()
    feats["image_embeds"] = inputs["embeds"]
    feats[BLACK_IMAGE_ATTR] = inputs["black"]
    per_frame = image_prompt(h, feats, "one per frame").weighted(0.9)
    noise = torch.cat([inputs["noise"], inputs["noise"].flip(-1)])
    both, _ = velocity(applied(flux, h, per_frame), inputs, noise=noise)
    for i in range(2):
        alone, _ = velocity(applied(flux, h, prompt_of(h, inputs, i, weight=0.9)), inputs, noise=noise[i:i + 1])
        assert_close_reordered(both[i:i + 1], alone, f"frame {i}")


def test_adapters_and_models_of_other_families_are_refused(flux, inputs, handles, adapter_file):
    from support.host_unet import comfy_model

    from ipadapter_ext.ip_adapter_core.errors import IPAdapterMismatchError
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle

    h = handles["v1"]
    sd15 = comfy_model("sd15", device="meta")
    with pytest.raises(IPAdapterMismatchError, match="Flux.1 IP-Adapter but the model is SD1.5"):
        applied(sd15, h, prompt_of(h, inputs))
    sd_handle = load_adapter_handle(adapter_file("ip-adapter_sd15", "safetensors"))
    import comfy.clip_vision

    from ipadapter_ext.ip_adapter_core.prompt.vision import image_prompt

    feats = comfy.clip_vision.Output()
    feats["image_embeds"] = torch.randn(1, 1024)
    with pytest.raises(IPAdapterMismatchError, match="SD1.5 IP-Adapter but the model is Flux.1"):
        applied(flux, sd_handle, image_prompt(sd_handle, feats))
    deeper = comfy_flux(double=3, single=1, heads=2, seed=0)
    with pytest.raises(IPAdapterMismatchError, match="3 double and 1 single blocks 256 wide.*2 double"):
        applied(deeper, h, prompt_of(h, inputs))


def test_xlabs_without_a_negative_says_what_to_connect(handles, inputs):
    import comfy.clip_vision

    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
    from ipadapter_ext.ip_adapter_core.prompt.vision import image_prompt

    feats = comfy.clip_vision.Output()
    feats["image_embeds"] = inputs["embeds"][:1]
    with pytest.raises(IPAdapterError, match="black image.*clip_vision"):
        image_prompt(handles["v1"], feats)


def test_state_dict_layout_matches_diffusers_renaming():
    """The test's own renaming of XLabs' keys is the one diffusers' loader makes (so both sides read the
    same tensors)."""
    flat = xlabs_state_dict("v1", double=2, hidden=256, dtype=torch.float32)
    sections = diffusers_ip_sections(flat)
    assert set(sections["ip_adapter"]) == {f"{i}.to_{kv}_ip.{e}" for i in range(2) for kv in "kv"
                                           for e in ("weight", "bias")}


# ---------------------------------------------------------------------------- InstantX

@pytest.fixture(scope="module")
def instantx(tmp_path_factory):
    """A Flux of 1 double + 2 single blocks, and an InstantX-layout adapter for it (16 tokens of width 512:
    the published 128 of 4096 would be 1.2 B parameters of MLP)."""
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle

    path = write_instantx(tmp_path_factory.mktemp("instantx") / "ip-adapter.safetensors", double=1, single=2,
                          hidden=256, tokens=16, width=512)
    return comfy_flux(double=1, single=2, heads=2, seed=5), load_adapter_handle(path), path


def instantx_prompt(handle, pooled, **weighting):
    import comfy.clip_vision

    from ipadapter_ext.ip_adapter_core.files.config import POOLED
    from ipadapter_ext.ip_adapter_core.prompt.vision import image_prompt

    feats = comfy.clip_vision.Output()
    feats[POOLED] = pooled
    return image_prompt(handle, feats).weighted(**{"weight": 1.0, **weighting})


def test_instantx_equals_its_transcription(instantx, inputs, parity):
    """Double and single blocks, the term inside the attention, K'/V' RMS-normed per head: against
    tests/support/reference_instantx.py (Shakker-Labs' node's maths) on the same weights."""
    from safetensors.torch import load_file

    from support import reference_instantx

    flux, handle, path = instantx
    pooled = torch.randn(1, SIGLIP_POOLED, generator=torch.Generator().manual_seed(7))
    lam = 0.7
    ours, _ = velocity(applied(flux, handle, instantx_prompt(handle, pooled, weight=lam)), inputs)
    ref, _ = velocity(reference_instantx.patched(flux, load_file(str(path)), pooled, 16, lam), inputs)
    base, _ = velocity(flux, inputs)
    parity(f"flux instantx, λ {lam}, cond", ours, ref, TOL)
    assert rel_err(ours, base) > EFFECT
    model = applied(flux, handle, instantx_prompt(handle, pooled, weight=lam))
    dit = model.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", 0), ("single_block", 0), ("single_block", 1)}


def test_instantx_outside_its_range_is_bit_identical_through_the_attention_hook(instantx, inputs):
    """start_at 0.8 (sigma 0.44) gates this step off: the term goes through the attention hook multiplied by 0,
    and the output equals the unpatched model's bit for bit."""
    flux, handle, _ = instantx
    pooled = torch.randn(1, SIGLIP_POOLED)
    base, _ = velocity(flux, inputs, 3.0)
    ours, _ = velocity(applied(flux, handle, instantx_prompt(handle, pooled, start_at=0.8)), inputs, 3.0)
    assert torch.equal(ours, base)


def test_instantx_hook_refuses_a_block_that_calls_attention_twice(instantx, inputs):
    """The term is placed by ComfyUI's attention override; a host whose block calls attention other than once
    gets a clear error, not a silently misplaced term."""
    import comfy.ldm.flux.math as flux_math

    flux, handle, _ = instantx
    model = applied(flux, handle, instantx_prompt(handle, torch.randn(1, SIGLIP_POOLED)))
    original = flux_math.attention

    def twice(*args, **kwargs):
        original(*args, **kwargs)
        return original(*args, **kwargs)

    try:
        flux_math.attention = twice
        import comfy.ldm.flux.layers as layers
        saved, layers.attention = layers.attention, twice
        with pytest.raises(RuntimeError, match="ran 2 attention calls where one was expected"):
            velocity(model, inputs)
    finally:
        flux_math.attention = original
        layers.attention = saved


def test_siglip_pooling_head_equals_transformers(tmp_path, parity):
    """ComfyUI's SigLIP tower (its class, 2 layers of so400m's width) + our head = transformers'
    SiglipVisionModel.pooler_output on the same random weights; the head is read from the file, tensors only."""
    import comfy.clip_model
    import comfy.ops
    from safetensors.torch import save_file
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from ipadapter_ext.ip_adapter_core.files.encoder_heads import read_pooling_head

    cfg = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=2, num_attention_heads=16,
                             image_size=384, patch_size=14)
    torch.manual_seed(0)
    hf = SiglipVisionModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.02 * torch.randn_like(p))
    # the released file's names (transformers 5 drops the vision_model. prefix from the bare tower's state dict)
    sd = {k if k.startswith("vision_model.") else f"vision_model.{k}": v for k, v in hf.state_dict().items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "siglip.safetensors"))
    comfy_cfg = dict(num_channels=3, hidden_act="gelu_pytorch_tanh", hidden_size=1152, image_size=384,
                     intermediate_size=4304, model_type="siglip_vision_model", num_attention_heads=16,
                     num_hidden_layers=2, patch_size=14, layer_norm_eps=1e-6)
    tower = comfy.clip_model.CLIPVisionModelProjection(comfy_cfg, torch.float32, "cpu", comfy.ops.manual_cast)
    missing, unexpected = tower.load_state_dict(sd, strict=False)
    assert not missing and all(k.startswith("vision_model.head.") for k in unexpected)
    head = read_pooling_head(tmp_path / "siglip.safetensors")
    pixels = torch.randn(2, 3, 384, 384)
    with torch.no_grad():
        want = hf(pixel_values=pixels).pooler_output
        ours = head(tower(pixel_values=pixels)[0])
    parity("SigLIP tower (2 layers) + pooling head vs transformers pooler_output", ours, want, 1e-5)


def test_a_siglip_file_without_its_head_is_refused_naming_the_fix(tmp_path):
    from safetensors.torch import save_file

    from ipadapter_ext.ip_adapter_core.errors import IPAdapterFileError
    from ipadapter_ext.ip_adapter_core.files.encoder_heads import read_pooling_head
    from ipadapter_ext.ip_adapter_core.files.model_folders import encoder_of_file

    body = {"vision_model.post_layernorm.weight": torch.zeros(1152),
            "vision_model.embeddings.position_embedding.weight": torch.zeros(729, 1152)}
    save_file(body, str(tmp_path / "no_head.safetensors"))
    assert encoder_of_file(tmp_path / "no_head.safetensors") == "SigLIP so400m/14-384 without its pooling head " \
                                                                "(vision_model.head.*)"
    with pytest.raises(IPAdapterFileError, match="without its attention-pooling head.*google/siglip-so400m"):
        read_pooling_head(tmp_path / "no_head.safetensors")
    save_file({**body, "vision_model.head.probe": torch.zeros(1, 1, 1152)}, str(tmp_path / "head.safetensors"))
    assert encoder_of_file(tmp_path / "head.safetensors") == "SigLIP so400m/14-384"
    with pytest.raises(IPAdapterFileError, match="pooling head of another shape"):
        read_pooling_head(tmp_path / "head.safetensors")


def test_instantx_without_pooled_features_says_which_loader(instantx):
    import comfy.clip_vision

    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
    from ipadapter_ext.ip_adapter_core.prompt.vision import image_prompt

    _, handle, _ = instantx
    feats = comfy.clip_vision.Output()
    feats["last_hidden_state"] = torch.randn(1, 729, 1152)
    with pytest.raises(IPAdapterError, match="no SigLIP pooled output.*IP-Adapter CLIP Vision Loader"):
        image_prompt(handle, feats)


def test_training_refuses_flux_by_name(flux):
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterMismatchError
    from ipadapter_ext.ip_adapter_core.training.comfy_session import adapter_for_model

    with pytest.raises(IPAdapterMismatchError, match="training works on SD1.5 and SDXL UNets; this is a Flux.1 model"):
        adapter_for_model(flux, None, "linear")


def test_the_attention_map_refuses_flux_by_name(flux, inputs, handles):
    from ipadapter_ext.ip_adapter_core.apply.attention_map import record
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError

    h = handles["v1"]
    model = applied(flux, h, prompt_of(h, inputs))
    with pytest.raises(IPAdapterError, match="transformer blocks of Flux or SD3.5, which it does not record"):
        record(model, conds(inputs, 0), conds(inputs, 1), {"samples": inputs["latent"]}, 0, 2, 0, 1.0, "euler",
               "simple")


def test_the_preset_loaders_point_flux_users_to_the_loader(flux):
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
    from ipadapter_ext.nodes.presets import IPAUnifiedLoader

    with pytest.raises(IPAdapterError, match="presets cover SD1.5 and SDXL; for Flux.1 load the adapter with "
                                             "IP-Adapter Loader"):
        IPAUnifiedLoader.execute(flux, "STANDARD")
