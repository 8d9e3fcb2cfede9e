"""What a trainer writes (ip_adapter_core/training/save.py) is a file every loader reads: our own
detection and strict loading (tiny SD1.5 linear / plus / full-face, tiny SDXL linear), and, in the
host test, diffusers' own ``load_ip_adapter`` giving the same UNet output as this extension's
patch in ComfyUI's UNet (both on the same tiny random weights)."""
from __future__ import annotations

import gc
import uuid

import pytest
import safetensors
import torch

from ipadapter_ext.ip_adapter_core.files.adapter import load_adapter, read_adapter
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
from ipadapter_ext.ip_adapter_core.files.layers import layers_of_width
from ipadapter_ext.ip_adapter_core.training import save
from ipadapter_ext.ip_adapter_core.training.adapter_init import diffusers_text_kv, new_adapter, new_config

TOL = 1e-4       # UNet output, float32, two hosts (as tests/test_host_parity.py)
EFFECT = 1e-2    # the image prompt must move the output far more than TOL
TIMESTEP = 500.0


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models: on a shared 2-core machine a second intra-op thread mostly spins (the host
    test took 6 s with one thread, 35 s with two while other jobs ran)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sdxl_tiny_layers_are_sdxl_structure():
    tiny, full = layers_of_width("sdxl", 32), layers_of_width("sdxl", 320)
    assert len(tiny) == 70 and [l.file_index for l in tiny] == list(range(1, 140, 2))
    assert [l.key for l in tiny] == [l.key for l in full]
    assert [l.hidden for l in tiny] == [l.hidden // 10 for l in full]
    assert {l.hidden for l in tiny} == {64, 128} and {l.dim_head for l in tiny} == {64}
    cfg = new_config("sdxl", "linear", model_channels=32)
    assert cfg.model_channels == 32 and cfg.layers == tiny
    assert cfg.layer_hidden == tuple(l.hidden for l in tiny)


def _perturbed(cfg, seed):
    """A new adapter with every tensor moved off its initial value (LayerNorm 1/0 included), as
    after training, so a file that dropped or reordered something would not pass by chance."""
    model = new_adapter(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


CASES = [("sd15", "linear", "safetensors"), ("sd15", "linear", "bin"), ("sd15", "resampler", "safetensors"),
         ("sd15", "resampler", "bin"), ("sd15", "mlp", "safetensors"), ("sdxl", "linear", "safetensors")]


@pytest.mark.parametrize("family,projection,fmt", CASES, ids=["-".join(c) for c in CASES])
def test_saved_file_is_detected_and_loads_strictly(tmp_path, family, projection, fmt):
    cfg = new_config(family, projection, model_channels=32)
    model = _perturbed(cfg, seed=3)
    path = save.save_adapter(model, tmp_path / f"trained.{fmt}")
    assert path == tmp_path / f"trained.{fmt}" and path.is_file()
    want = {k: v.detach().half() for k, v in model.state_dict().items()}

    if fmt == "bin":  # the reference's nested layout
        raw = torch.load(path, weights_only=True)
        assert set(raw) == {"image_proj", "ip_adapter"}
        flat = {f"{s}.{k}": v for s, d in raw.items() for k, v in d.items()}
    else:
        with safetensors.safe_open(str(path), "pt") as f:
            assert f.metadata() == {"format": "pt"}
            flat = {k: f.get_tensor(k) for k in f.keys()}
    assert set(flat) == set(want)
    assert all(v.dtype == torch.float16 and torch.equal(v, want[k]) for k, v in flat.items())

    detected, sd = read_adapter(path)
    assert detected == cfg, (detected, cfg)
    assert set(sd) == set(want)
    loaded = load_adapter(path)  # strict
    assert loaded.config == cfg
    got = loaded.model.state_dict()
    assert set(got) == set(want)
    bad = [k for k in want if got[k].dtype != torch.float16 or not torch.equal(got[k], want[k])]
    assert not bad, bad[:4]


def test_save_float32_and_refuse_unknown_format(tmp_path):
    cfg = new_config("sd15", "linear", model_channels=32)
    model = _perturbed(cfg, seed=4)
    path = save.save_adapter(model, tmp_path / "fp32.safetensors", dtype=torch.float32)
    loaded = load_adapter(path)
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(IPAdapterError, match="format"):
        save.save_adapter(model, tmp_path / "x.ckpt", fmt="ckpt")


# ------------------------------------------------------------------ diffusers reads what we write

def _comfy_forward(patcher, x, t, sigma, ctx, layout):
    """ComfyUI's raw UNet call with transformer_options as _calc_cond_batch makes them."""
    import comfy.patcher_extension

    to = comfy.patcher_extension.merge_nested_dicts(
        {}, patcher.model_options.get("transformer_options", {}), copy_dict1=False)
    to["cond_or_uncond"] = list(layout)
    to["uuids"] = [uuid.uuid4() for _ in layout]
    to["sigmas"] = sigma
    with torch.no_grad():
        return patcher.model.diffusion_model(x, t, context=ctx, transformer_options=to)


@pytest.mark.host
def test_diffusers_load_ip_adapter_on_saved_file_equals_our_patch(tmp_path, parity):
    from conftest import rel_err
    from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.ip_adapter_core.apply.image_prompt import apply_image_prompt
    from ipadapter_ext.ip_adapter_core.prompt.tokens import project
    from support.unet_pairs import diffusers_ip_host, tiny_sd15_pair

    unet, comfy = tiny_sd15_pair(seed=0)
    cfg = new_config("sd15", "linear", model_channels=32)
    model = new_adapter(cfg, diffusers_text_kv(unet), seed=7)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():  # as after training: K'/V' no longer the text K/V
        for p in model.ip_adapter.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    path = save.save_adapter(model, tmp_path / "tiny-ip-adapter_sd15.safetensors")
    del model

    layout = (1, 0)  # negative chunk first, as diffusers orders CFG
    latent = torch.randn(1, 4, 16, 16, generator=g)
    text = torch.randn(2, 77, 768, generator=g)  # negative, positive
    feats = torch.randn(1, cfg.feature_dim, generator=g)
    ms = comfy.get_model_object("model_sampling")
    sigma = ms.sigma(torch.tensor([TIMESTEP]))
    t = ms.timestep(torch.cat([sigma] * 2)).float()
    x = torch.cat([latent] * 2)

    with torch.no_grad():
        base_d = unet(x, t, encoder_hidden_states=text).sample
    base_c = _comfy_forward(comfy, x, t, sigma, text, layout)
    parity("train file sd15 tiny unpatched", base_c, base_d, TOL)

    host = diffusers_ip_host("sd15", unet, None)
    host.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name, image_encoder_folder=None,
                         local_files_only=True)
    handle = load_adapter_handle(path)
    assert handle.config == cfg
    pos, neg = project(handle.model.image_proj, handle.config, feats)
    embeds = torch.stack([torch.zeros_like(feats[0]), feats[0]])[:, None]  # [neg; pos], 1 image each
    try:
        for lam in (1.0, 0.5):
            host.set_ip_adapter_scale(lam)
            with torch.no_grad():
                want = unet(x, t, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [embeds]}).sample
            patched = apply_image_prompt(comfy, handle, ImagePrompt(pos, neg, cfg, str(path), weight=lam))
            got = _comfy_forward(patched, x, t, sigma, text, layout)
            parity(f"train file sd15 tiny linear λ={lam} diffusers load_ip_adapter", got, want, TOL)
            effect = rel_err(got, base_c)
            assert effect > EFFECT, f"λ={lam}: the adapter barely changes the output ({effect:.2e})"
            del patched
    finally:
        host.unload_ip_adapter()
        gc.collect()
