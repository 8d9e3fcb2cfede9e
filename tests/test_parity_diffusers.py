"""Exactness against diffusers (an independent implementation) on real-shaped random weights."""
import types

import pytest
import torch
from diffusers.loaders.unet import UNet2DConditionLoadersMixin
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, IPAdapterAttnProcessor2_0

from support.adapter_files import adapter_sections
from conftest import rel_err
from ipadapter_ext.ip_adapter_core.files.adapter import load_adapter
from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt
from ipadapter_ext.ip_adapter_core.files.layers import layers_for
from ipadapter_ext.ip_adapter_core.apply.attention import attention_functions
from ipadapter_ext.ip_adapter_core.apply.branch import Branch
from ipadapter_ext.ip_adapter_core.apply.unet_patch import Attn2Patch
from ipadapter_ext.ip_adapter_core.prompt.tokens import project

TOL = 1e-5


def shipped_patch(ad, layer, pos, neg, lam, mask=None):
    """The attn2 patch exactly as IPAApply installs it (Attn2Patch.__call__ is what runs)."""
    branch = Branch(types.SimpleNamespace(model=ad.model), ImagePrompt(pos, neg, ad.config), mask)
    return Attn2Patch(layer, ((branch, lam),))


def call(patch, q, k, v, layout=(1, 0), latent_hw=(32, 32)):
    extra = dict(n_heads=patch.layer.heads, cond_or_uncond=list(layout), sigmas=None,
                 original_shape=[q.shape[0] // len(layout), 4, *latent_hw], attn_precision=None)
    return patch(q, k, v, extra)


def diffusers_projection(variant):
    proj = adapter_sections(variant)["image_proj"]
    proj = {k: v.float() for k, v in proj.items()}
    return UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(
        None, proj, low_cpu_mem_usage=False).float().eval()


def features_for(cfg, n, gen):
    if cfg.projection == "linear":
        return torch.randn(n, cfg.feature_dim, generator=gen)
    return torch.randn(n, 257, cfg.feature_dim, generator=gen)


@pytest.mark.parametrize("variant", ["ip-adapter_sd15", "ip-adapter-plus_sd15", "ip-adapter-full-face_sd15",
                                     "ip-adapter_sdxl", "ip-adapter-plus_sdxl_vit-h"])
def test_projection_matches_diffusers(adapter_file, variant, parity):
    ours = load_adapter(adapter_file(variant), dtype=torch.float32)
    ref = diffusers_projection(variant)
    gen = torch.Generator().manual_seed(1)
    x = features_for(ours.config, 2, gen)
    with torch.no_grad():
        want = ref(x)
        got = ours.model.image_proj(x)
    assert got.shape == want.shape == (2, ours.config.num_tokens, ours.config.cross_dim)
    parity(f"projection {variant}", got, want, TOL)


@pytest.mark.parametrize("variant", ["ip-adapter_sd15", "ip-adapter-plus_sd15"])
def test_negative_tokens_follow_reference(adapter_file, variant, parity):
    """Negative tokens as diffusers' encode_image makes them: zero embeds (linear) or the
    encoder's penultimate states for an all-zero pixel tensor (hidden-state variants)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    ours = load_adapter(adapter_file(variant), dtype=torch.float32)
    cfg = ours.config
    torch.manual_seed(0)
    # A small encoder with the real output widths: 1280 hidden, 1024 projection, 257 tokens.
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1280, intermediate_size=256, num_hidden_layers=3, num_attention_heads=8,
        image_size=224, patch_size=14, projection_dim=1024)).eval()
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        if cfg.projection == "linear":
            feats, zero_feats = enc(pixels).image_embeds, None
            ref_neg = torch.zeros_like(feats)
        else:
            feats = enc(pixels, output_hidden_states=True).hidden_states[-2]
            zero_feats = enc(torch.zeros(1, 3, 224, 224), output_hidden_states=True).hidden_states[-2]
            ref_neg = enc(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        pos, neg = project(ours.model.image_proj, cfg, feats, zero_image_features=zero_feats)
        dproj = diffusers_projection(variant)
        want_pos, want_neg = dproj(feats), dproj(ref_neg)
    # concat: two images -> one prompt of 2*T tokens
    parity(f"positive tokens {variant}", pos, want_pos.reshape(1, -1, cfg.cross_dim), TOL)
    parity(f"negative tokens {variant}", neg, want_neg.reshape(1, -1, cfg.cross_dim), TOL)
    if cfg.projection == "linear":
        assert neg.abs().sum() > 0, "zero embeds project to non-zero tokens (LayerNorm bias)"


def _diffusers_layer(layer, cross_dim, tokens, scale, k_w, v_w, gen):
    attn = Attention(query_dim=layer.hidden, cross_attention_dim=cross_dim, heads=layer.heads,
                     dim_head=layer.dim_head, out_bias=True)
    for p in attn.parameters():
        p.data = torch.randn(p.shape, generator=gen) / (p.shape[-1] ** 0.5)
    proc = IPAdapterAttnProcessor2_0(layer.hidden, cross_dim, num_tokens=(tokens,), scale=scale)
    proc.to_k_ip[0].weight.data.copy_(k_w)
    proc.to_v_ip[0].weight.data.copy_(v_w)
    attn.set_processor(proc)
    return attn.eval()


LAMBDAS = [0.0, 0.5, 1.0, 2.0]


@pytest.mark.parametrize("variant", ["ip-adapter_sd15", "ip-adapter-plus_sd15", "ip-adapter_sdxl_vit-h"])
def test_every_layer_matches_diffusers_processor(adapter_file, variant, parity):
    """Each cross-attention layer shape, CFG batch [negative; positive] as ComfyUI orders
    it (cond_or_uncond [1, 0]), λ in {0, 0.5, 1, 2}."""
    ad = load_adapter(adapter_file(variant), dtype=torch.float32)
    cfg = ad.config
    gen = torch.Generator().manual_seed(2)
    layers = layers_for(cfg.family)
    # SDXL: one layer of each distinct (hidden, position) kind keeps the run short
    if cfg.family == "sdxl":
        layers = [layers[0], layers[4], layers[24], layers[54], layers[69]]
    pos = torch.randn(1, cfg.num_tokens, cfg.cross_dim, generator=gen)
    neg = torch.randn(1, cfg.num_tokens, cfg.cross_dim, generator=gen)
    worst = {lam: 0.0 for lam in LAMBDAS}
    for layer in layers:
        n = {320: 256, 640: 64, 1280: 16}[layer.hidden]
        x = torch.randn(2, n, layer.hidden, generator=gen)
        text = torch.randn(2, 77, cfg.cross_dim, generator=gen)
        ipl = ad.model.layer(layer.file_index)
        for lam in LAMBDAS:
            attn = _diffusers_layer(layer, cfg.cross_dim, cfg.num_tokens, lam,
                                    ipl.to_k_ip.weight, ipl.to_v_ip.weight, gen)
            with torch.no_grad():
                want = attn(x, encoder_hidden_states=(text, [torch.cat([neg, pos])]))
                q, k, v = attn.to_q(x), attn.to_k(text), attn.to_v(text)
                got = attn.to_out[0](call(shipped_patch(ad, layer, pos, neg, lam), q, k, v))
            worst[lam] = max(worst[lam], rel_err(got, want))
            if lam == 0:
                attn.set_processor(AttnProcessor2_0())
                with torch.no_grad():
                    plain = attn(x, encoder_hidden_states=text)
                    text_only = attn.to_out[0](attention_functions()[0](q, k, v, layer.heads))
                # λ = 0 is the unpatched layer's own attention, bit for bit; and that is diffusers' plain one
                assert torch.equal(got, text_only), f"λ=0 differs from the text attention at layer {layer.key}"
                assert rel_err(got, plain) < TOL
    for lam in LAMBDAS:
        parity(f"attention {variant} worst of {len(layers)} layers λ={lam}", worst[lam], None, TOL)


@pytest.mark.parametrize("layout", [[1, 0], [0], [1, 0, 0], [0, 1]])
def test_chunk_layouts_place_positive_and_negative_tokens(adapter_file, layout):
    """Each chunk of the batch attends to the token set its cond_or_uncond code names: the
    whole batch through the patch equals each chunk alone with that chunk's tokens only."""
    ad = load_adapter(adapter_file("ip-adapter_sd15"), dtype=torch.float32)
    layer = layers_for("sd15")[0]
    gen = torch.Generator().manual_seed(3)
    b = 2
    rows = len(layout) * b
    q = torch.randn(rows, 64, layer.hidden, generator=gen)
    k = v = torch.randn(rows, 77, layer.hidden, generator=gen)
    pos, neg = torch.randn(2, 1, 4, 768, generator=gen)
    got = call(shipped_patch(ad, layer, pos, neg, 0.7), q, k, v, layout)
    for c, code in enumerate(layout):
        sl = slice(c * b, (c + 1) * b)
        tokens = neg if code == 1 else pos
        alone = call(shipped_patch(ad, layer, tokens, tokens, 0.7), q[sl], k[sl], v[sl], (0,))
        assert torch.allclose(got[sl], alone, atol=1e-6), f"chunk {c} (code {code}) of {layout}"


def test_masked_image_branch_matches_diffusers(adapter_file, parity):
    """A region mask on the image branch, given at the layer's own resolution so diffusers'
    resize is the identity, equals diffusers' ip_adapter_masks."""
    ad = load_adapter(adapter_file("ip-adapter_sd15"), dtype=torch.float32)
    layer = layers_for("sd15")[2]  # input 4: 640 channels, 16x16 tokens on a 32x32 latent
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 256, layer.hidden, generator=gen)
    text = torch.randn(2, 77, 768, generator=gen)
    pos, neg = torch.randn(2, 1, 4, 768, generator=gen)
    mask = torch.zeros(1, 16, 16)
    mask[:, :, :7] = 1.0
    ipl = ad.model.layer(layer.file_index)
    attn = _diffusers_layer(layer, 768, 4, 0.8, ipl.to_k_ip.weight, ipl.to_v_ip.weight, gen)
    with torch.no_grad():
        want = attn(x, encoder_hidden_states=(text, [torch.cat([neg, pos]).unsqueeze(1)]),
                    ip_adapter_masks=[mask.unsqueeze(0)])
        q, k, v = attn.to_q(x), attn.to_k(text), attn.to_v(text)
        got = attn.to_out[0](call(shipped_patch(ad, layer, pos, neg, 0.8, mask), q, k, v))
    parity("masked attention ip-adapter_sd15 λ=0.8", got, want, TOL)


@pytest.mark.parametrize("tokens", [4, 16, 257])
@pytest.mark.parametrize("masked", [False, True])
def test_few_key_path_equals_sdpa_path_and_diffusers(adapter_file, tokens, masked, parity, monkeypatch):
    """The explicit batched-matmul image branch (chosen on CPU for few keys) and the SDPA branch
    give the same result, and both match diffusers' processor: chunks [1, 0], a mask or none."""
    from ipadapter_ext.ip_adapter_core.apply import unet_patch as patch_mod

    variant = {4: "ip-adapter_sd15", 16: "ip-adapter-plus_sd15", 257: "ip-adapter-full-face_sd15"}[tokens]
    ad = load_adapter(adapter_file(variant), dtype=torch.float32)
    layer = layers_for("sd15")[0]  # input 1: 320 channels, 32x32 tokens on a 32x32 latent
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1024, layer.hidden, generator=gen)
    text = torch.randn(2, 77, 768, generator=gen)
    pos, neg = torch.randn(2, 1, tokens, 768, generator=gen)
    mask = None
    if masked:
        mask = torch.zeros(1, 32, 32)
        mask[:, :, :13] = 1.0
    ipl = ad.model.layer(layer.file_index)
    attn = _diffusers_layer(layer, 768, tokens, 0.6, ipl.to_k_ip.weight, ipl.to_v_ip.weight, gen)
    got = {}
    with torch.no_grad():
        kw = dict(ip_adapter_masks=[mask.unsqueeze(0)]) if masked else {}
        want = attn(x, encoder_hidden_states=(text, [torch.cat([neg, pos]).unsqueeze(1)]), **kw)
        q, k, v = attn.to_q(x), attn.to_k(text), attn.to_v(text)
        for few in (True, False):
            monkeypatch.setattr(patch_mod, "use_few_key_path", lambda q_, n_, few=few: few)
            got[few] = attn.to_out[0](call(shipped_patch(ad, layer, pos, neg, 0.6, mask), q, k, v))
    assert rel_err(got[True], got[False]) < 2e-6
    parity(f"few-key path {variant} {'masked ' if masked else ''}λ=0.6", got[True], want, TOL)
