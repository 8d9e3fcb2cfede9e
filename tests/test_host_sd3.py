"""SD3.5 Large in the real host: InstantX's IP-Adapter through ComfyUI's sampler equals diffusers' SD3 transformer
with its own IP-Adapter loading (``SD3Transformer2DLoadersMixin._load_ip_adapter_weights``: the
``IPAdapterTimeImageProjection`` and ``SD3IPAdapterJointAttnProcessor2_0`` that ``load_ip_adapter`` installs), on the
same random weights of a small SD3.5-Large-structured MMDiT (ComfyUI's class, tests/support/sd3_models.py).

One euler step from sigma to 0 through ``comfy.sample.sample_custom`` gives the model's velocity back (denoised =
x - sigma·v). diffusers' side runs its transformer at timestep 1000·sigma (ComfyUI's SD3 model_sampling) on the
same input with ``ip_adapter_image_embeds`` = [SigLIP states; zeros] (the pipeline's negative), combined as CFG
combines. The image tokens depend on the timestep, so two sigmas are checked.
"""
from __future__ import annotations

import pytest
import torch

from conftest import rel_err
from support.sd3_models import (CONTEXT, POOLED, SIGLIP_HIDDEN, SIGLIP_POSITIONS, comfy_sd3, diffusers_ip_sections,
                                diffusers_twin, sd3_adapter_state_dict, write_sd3_adapter)

pytestmark = pytest.mark.host

TOL = 1e-4
EFFECT = 1e-2
LATENT = 16
TEXT = 8
BLOCKS = 2


@pytest.fixture(scope="module")
def sd3():
    return comfy_sd3(depth=BLOCKS, seed=0)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return dict(noise=torch.randn(1, 16, LATENT, LATENT, generator=g),
                latent=torch.randn(1, 16, LATENT, LATENT, generator=g),
                text=torch.randn(2, TEXT, CONTEXT, generator=g), pooled=torch.randn(2, POOLED, generator=g),
                siglip=torch.randn(1, SIGLIP_POSITIONS, SIGLIP_HIDDEN, generator=g))


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle

    path = write_sd3_adapter(tmp_path_factory.mktemp("sd3") / "ip-adapter.safetensors", blocks=BLOCKS)
    return load_adapter_handle(path), path


def conds(inputs, row):
    return [[inputs["text"][row:row + 1], {"pooled_output": inputs["pooled"][row:row + 1]}]]


def velocity(model, inputs, sigma, cfg=1.0):
    import comfy.sample
    import comfy.samplers

    noise, latent = inputs["noise"], inputs["latent"]
    out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object("euler"),
                                     torch.tensor([sigma, 0.0]), conds(inputs, 0), conds(inputs, 1), latent,
                                     disable_pbar=True, seed=0)
    fmt = model.model.latent_format
    x = sigma * noise + (1 - sigma) * fmt.process_in(latent)
    return (x - fmt.process_in(out)) / sigma, x


def prompt_of(handle, siglip, **weighting):
    import comfy.clip_vision

    from ipadapter_ext.ip_adapter_core.prompt.vision import image_prompt

    feats = comfy.clip_vision.Output()
    feats["penultimate_hidden_states"] = siglip
    return image_prompt(handle, feats).weighted(**{"weight": 1.0, **weighting})


def applied(model, handle, prompt):
    from ipadapter_ext.ip_adapter_core.apply.image_prompt import apply_image_prompt

    return apply_image_prompt(model, handle, prompt)


def diffusers_velocity(sd3, path, x, inputs, sigma, lam, cfg):
    from safetensors.torch import load_file

    twin = diffusers_twin(sd3)
    twin._load_ip_adapter_weights(diffusers_ip_sections(load_file(str(path))), low_cpu_mem_usage=False)
    for proc in twin.attn_processors.values():
        proc.scale = lam
    embeds = torch.cat([inputs["siglip"], torch.zeros_like(inputs["siglip"])])
    with torch.no_grad():
        v = twin(hidden_states=x.expand(2, -1, -1, -1), encoder_hidden_states=inputs["text"],
                 pooled_projections=inputs["pooled"], timestep=torch.full((2,), 1000 * sigma),
                 joint_attention_kwargs={"ip_adapter_image_embeds": embeds}, return_dict=False)[0]
    return v[1:] + cfg * (v[:1] - v[1:])


@pytest.mark.parametrize("sigma", [0.9, 0.35])
def test_sd3_equals_diffusers(sd3, inputs, adapter, parity, sigma):
    """Positive and negative rows in one batch (CFG 3), λ 0.6, at two timesteps."""
    handle, path = adapter
    lam, cfg = 0.6, 3.0
    ours, x = velocity(applied(sd3, handle, prompt_of(handle, inputs["siglip"], weight=lam)), inputs, sigma, cfg)
    ref = diffusers_velocity(sd3, path, x, inputs, sigma, lam, cfg)
    base, _ = velocity(sd3, inputs, sigma, cfg)
    parity(f"sd3.5 instantx, sigma {sigma}, cfg {cfg}", ours, ref, TOL)
    assert rel_err(ours, base) > EFFECT


def test_the_tokens_change_with_the_timestep_and_are_made_once_per_evaluation(sd3, inputs, adapter):
    """The Resampler runs once per model evaluation (both rows, every block) and its tokens differ between steps."""
    handle, _ = adapter
    proj = handle.model.image_proj
    seen = []
    hook = proj.register_forward_hook(lambda m, args, out: seen.append(out[0].detach().clone()))
    try:
        model = applied(sd3, handle, prompt_of(handle, inputs["siglip"]))
        velocity(model, inputs, 0.9, 3.0)
        velocity(model, inputs, 0.35, 3.0)
    finally:
        hook.remove()
    assert len(seen) == 2, f"the Resampler ran {len(seen)} times for 2 evaluations of {BLOCKS} blocks"
    assert rel_err(seen[0], seen[1]) > EFFECT


def test_lambda_zero_and_outside_the_range_leave_the_model_bit_for_bit(sd3, inputs, adapter):
    handle, _ = adapter
    base, _ = velocity(sd3, inputs, 0.9, 3.0)
    for weighting in (dict(weight=0.0), dict(start_at=0.9)):
        ours, _ = velocity(applied(sd3, handle, prompt_of(handle, inputs["siglip"], **weighting)), inputs, 0.9, 3.0)
        assert torch.equal(ours, base), weighting


def test_the_block_run_from_its_pieces_is_the_hosts_block_bit_for_bit(sd3, inputs):
    """The patch re-runs each joint block from ComfyUI's own pieces to reach its raw q/k/v; without a term that
    must be the host's block exactly (the last block, whose text stream ends, included)."""
    from ipadapter_ext.ip_adapter_core.apply.sd3_patch import joint_block

    dm = sd3.model.diffusion_model
    g = torch.Generator().manual_seed(3)
    width = dm.joint_blocks[0].x_block.attn.qkv.weight.shape[1]
    x, txt, c = torch.randn(2, 64, width, generator=g), torch.randn(2, TEXT, width, generator=g), torch.randn(2, width)
    with torch.no_grad():
        for block in dm.joint_blocks:
            want = block(txt, x, c=c, use_checkpoint=False, transformer_options={})
            got = joint_block(block, txt, x, c, {})
            assert torch.equal(got[1], want[1])
            assert (got[0] is None and want[0] is None) or torch.equal(got[0], want[0])


def test_the_published_layout_is_detected_from_its_shapes():
    from ipadapter_ext.ip_adapter_core.files.config import SIGLIP, detect_config
    from ipadapter_ext.ip_adapter_core.files.formats import adapter_sections

    sections, rest = adapter_sections(sd3_adapter_state_dict(device="meta"))
    cfg = detect_config(sections, "ip-adapter.bin", rest)
    assert (cfg.family, cfg.num_tokens, cfg.encoder, cfg.feature_dim, cfg.cross_dim) == ("sd3", 64, SIGLIP, 1152, 2432)
    assert len(cfg.layers) == 38 and cfg.layers[37].key == ("double_block", 37) and cfg.layers[0].heads == 38
    assert cfg.resampler.time_dim == 320 and cfg.resampler.heads == 20 and cfg.timed
    assert cfg.name == "SD3.5 Large IP-Adapter (64 tokens per step, SigLIP so400m/14-384 penultimate_hidden_states)"


def test_wrong_encoder_models_and_modes_are_refused_by_name(sd3, inputs, adapter):
    import comfy.clip_vision

    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
    from ipadapter_ext.ip_adapter_core.prompt.vision import image_prompt

    handle, _ = adapter
    vit_h = comfy.clip_vision.Output()
    vit_h["penultimate_hidden_states"] = torch.randn(1, 257, 1280)
    with pytest.raises(IPAdapterError, match="SigLIP so400m/14-384"):
        image_prompt(handle, vit_h)
    with pytest.raises(IPAdapterError, match="4 joint blocks 256 wide.*2 blocks 128 wide"):
        applied(comfy_sd3(depth=4), handle, prompt_of(handle, inputs["siglip"]))
    with pytest.raises(IPAdapterError, match="SD3.5 Medium"):
        applied(comfy_sd3(depth=2, x_block_self_attn_layers=[0]), handle, prompt_of(handle, inputs["siglip"]))
    with pytest.raises(IPAdapterError, match="weight_type.*SD3.5"):
        prompt_of(handle, inputs["siglip"], weight_type="ease in")
    with pytest.raises(IPAdapterError, match="V only"):
        applied(sd3, handle, prompt_of(handle, inputs["siglip"], scaling="K+V"))


def test_a_mask_limits_the_prompt_to_its_region(inputs, tmp_path):
    """On an MMDiT of one joint block, each image token's output depends on its own attention output: tokens outside
    the mask come out as without the image prompt, bit for bit."""
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle

    one = comfy_sd3(depth=1, seed=4)
    handle = load_adapter_handle(write_sd3_adapter(tmp_path / "one_block.safetensors", blocks=1))
    mask = torch.zeros(1, LATENT * 8, LATENT * 8)
    mask[:, :, : LATENT * 4] = 1.0                      # the left half of the picture
    prompt = prompt_of(handle, inputs["siglip"])
    base, _ = velocity(one, inputs, 0.6, 3.0)
    from ipadapter_ext.ip_adapter_core.apply.image_prompt import apply_image_prompt

    masked, _ = velocity(apply_image_prompt(one, handle, prompt, mask), inputs, 0.6, 3.0)
    left, right = (..., slice(0, LATENT // 2 - 2)), (..., slice(LATENT // 2 + 2, None))  # off the mask's edge
    assert torch.equal(masked[right], base[right])
    assert rel_err(masked[left], base[left]) > EFFECT
