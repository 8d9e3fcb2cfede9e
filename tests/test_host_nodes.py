"""The nodes inside the real ComfyUI host: registration, cloning, chaining, batching
layouts, λ = 0, the middle block, dtypes and errors."""
import asyncio
import os
import types

import pytest
import torch

from support.adapter_files import write_adapter
from conftest import REPO_ROOT

pytestmark = pytest.mark.host

NODE_NAMES = {"IPALoader": "IP-Adapter Loader", "IPACLIPVisionLoader": "IP-Adapter CLIP Vision Loader",
              "IPAEncodeImage": "IP-Adapter Encode Image", "IPAProject": "IP-Adapter Project",
              "IPAWeight": "IP-Adapter Weight (λ)", "IPAApply": "IP-Adapter Apply",
              "IPAApplySimple": "IP-Adapter (all-in-one)", "IPASaveEmbeds": "IP-Adapter Save Embeds",
              "IPALoadEmbeds": "IP-Adapter Load Embeds", "IPASaveFeatures": "IP-Adapter Save Features",
              "IPALoadFeatures": "IP-Adapter Load Features", "IPASchedule": "IP-Adapter λ Schedule",
              "IPACombineFeatures": "IP-Adapter Combine Features", "IPACombineEmbeds": "IP-Adapter Combine Embeds",
              "IPATrainingSet": "IP-Adapter Training Set", "IPATrain": "IP-Adapter Train",
              "IPASaveAdapter": "IP-Adapter Save", "IPAUnifiedLoader": "IP-Adapter Preset Loader",
              "IPAPrepareReference": "IP-Adapter Prepare Reference", "IPANoiseNegative": "IP-Adapter Noise Negative",
              "IPAApplyTiled": "IP-Adapter Tiled", "IPAEncodeEnhanced": "IP-Adapter Encode (Enhanced)",
              "IPAFrames": "IP-Adapter Frames", "IPAFrameWeights": "IP-Adapter Frame Weights",
              "IPAJoinFrameWeights": "IP-Adapter Join Frame Weights", "IPAPromptSchedule": "IP-Adapter Prompt Schedule",
              "IPAAttentionMap": "IP-Adapter Attention Map",
              "IPAFaceAnalysisLoader": "IP-Adapter Face Analysis Loader", "IPAFaceAnalysis": "IP-Adapter Face Analysis",
              "IPAProjectFace": "IP-Adapter Project Face", "IPAFaceID": "IP-Adapter FaceID (all-in-one)",
              "IPAUnifiedLoaderFaceID": "IP-Adapter FaceID Preset Loader"}


def test_nodes_load_in_comfyui_with_display_names():
    import nodes

    assert asyncio.run(nodes.load_custom_node(str(REPO_ROOT)))
    for node_id, display in NODE_NAMES.items():
        assert node_id in nodes.NODE_CLASS_MAPPINGS, node_id
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == display
        schema = nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()
        for inp in schema.inputs:
            assert inp.tooltip, f"{node_id}.{inp.id} has no tooltip"


def test_model_folder_registration_keeps_extra_model_paths(tmp_path):
    import folder_paths

    from ipadapter_ext.ip_adapter_core.files.loader import register_model_folder

    saved = folder_paths.folder_names_and_paths.pop("ipadapter", None)
    try:
        # what extra_model_paths.yaml leaves behind when it names an ipadapter folder first
        folder_paths.add_model_folder_path("ipadapter", str(tmp_path))
        register_model_folder()
        register_model_folder()  # idempotent
        paths, exts = folder_paths.folder_names_and_paths["ipadapter"]
        # then models/ipadapter, and the Flux packs' folders (models/xlabs/ipadapters, models/ipadapter-flux)
        assert paths[0] == str(tmp_path) and len(paths) == 4
        assert [os.path.relpath(p, folder_paths.models_dir) for p in paths[1:]] == \
            ["ipadapter", os.path.join("xlabs", "ipadapters"), "ipadapter-flux"]
        assert {".safetensors", ".bin"} <= set(exts)
        write_adapter(tmp_path, "ip-adapter_sd15")
        folder_paths.filename_list_cache.clear()
        assert "ip-adapter_sd15.safetensors" in folder_paths.get_filename_list("ipadapter")
    finally:
        if saved is not None:
            folder_paths.folder_names_and_paths["ipadapter"] = saved


# ---------------------------------------------------------------- helpers

def handle(path):
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle

    return load_adapter_handle(path)


def features(cfg, n=1, seed=0):
    """A CLIP_VISION_OUTPUT-like object with features of the adapter's encoder widths."""
    from comfy.clip_vision import Output

    from ipadapter_ext.ip_adapter_core.prompt.vision import ZERO_IMAGE_ATTR

    g = torch.Generator().manual_seed(seed)
    out = Output()
    out["image_embeds"] = torch.randn(n, 1024, generator=g)
    out["penultimate_hidden_states"] = torch.randn(n, 257, 1280, generator=g)
    out[ZERO_IMAGE_ATTR] = torch.randn(1, 257, 1280, generator=g)
    return out


def prompt(h, weight=1.0, blocks="all", custom="", start=0.0, end=1.0, seed=0):
    from ipadapter_ext.nodes.image_prompt import IPAProject
    from ipadapter_ext.nodes.weight import IPAWeight

    emb = IPAProject.execute(h, features(h.config, seed=seed), "concat").result[0]
    return IPAWeight.execute(emb, weight, blocks, custom, start, end).result[0]


def apply(model, h, p, mask=None):
    from ipadapter_ext.nodes.apply import IPAApply

    return IPAApply.execute(model, h, p, mask).result[0]


def attn2(model):
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


@pytest.fixture(scope="module")
def sd15():
    from support.host_unet import comfy_model

    return comfy_model("sd15")


@pytest.fixture(scope="module")
def base_io():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 16, 16, generator=g)
    ctx = torch.randn(2, 77, 768, generator=g)
    return x, torch.tensor([7.0, 7.0]), ctx


def run(model, io_, layout=(1, 0)):
    from support.host_unet import unet_forward

    x, sigma, ctx = io_
    return unet_forward(model, x, sigma, ctx, layout)


# ---------------------------------------------------------------- behaviour

def test_apply_clones_and_patches_all_16_layers(sd15, adapter_file):
    from ipadapter_ext.ip_adapter_core.files.layers import LAYERS

    h = handle(adapter_file("ip-adapter_sd15"))
    before = attn2(sd15).copy()
    out = apply(sd15, h, prompt(h))
    assert out is not sd15 and attn2(sd15) == before
    assert set(attn2(out)) == {l.key for l in LAYERS["sd15"]}
    assert ("middle", 0, 0) in attn2(out)


def test_lambda_zero_identical_and_base_model_untouched(sd15, adapter_file, base_io):
    h = handle(adapter_file("ip-adapter_sd15"))
    ref = run(sd15, base_io)
    # exact: at λ = 0 no image term is computed; the text attention is the same kernel on the same shapes
    assert torch.equal(run(apply(sd15, h, prompt(h, weight=0.0)), base_io), ref)
    patched = run(apply(sd15, h, prompt(h, weight=1.0)), base_io)
    assert not torch.allclose(patched, ref, atol=1e-4)
    assert torch.equal(run(sd15, base_io), ref), "applying to a clone changed the base model"


def test_middle_block_is_patched(sd15, tmp_path, base_io):
    """Adapter weights non-zero only in the middle block (file index 31) change the output;
    all-zero weights do not: the middle layer is really called."""
    only_mid = handle(write_adapter(tmp_path, "ip-adapter_sd15", only_layer=31, name="mid.safetensors"))
    none = handle(write_adapter(tmp_path, "ip-adapter_sd15", only_layer=-1, name="zero.safetensors"))
    ref = run(sd15, base_io)
    # exact: zero K'/V' add an exact zero to the same text attention; a weighted-out block is skipped
    assert torch.equal(run(apply(sd15, none, prompt(none)), base_io), ref)
    assert not torch.allclose(run(apply(sd15, only_mid, prompt(only_mid)), base_io), ref, atol=1e-5)
    # and only the middle block: weighting it out restores the base output
    no_mid = prompt(only_mid, blocks="custom", custom="input 1 = 1, output 11 = 1")
    assert torch.equal(run(apply(sd15, only_mid, no_mid), base_io), ref)


def reference_image_attention(q, tokens, wk, wv, heads):
    """softmax(q·K'ᵀ/√d)·V' per head, written out (independent of the extension's code)."""
    kk, vv = tokens.float() @ wk.float().T, tokens.float() @ wv.float().T
    b, n, inner = q.shape
    d = inner // heads
    qh = q.float().reshape(b, n, heads, d).transpose(1, 2)
    kh = kk.reshape(b, -1, heads, d).transpose(1, 2)
    vh = vv.reshape(b, -1, heads, d).transpose(1, 2)
    w = torch.softmax(qh @ kh.transpose(-1, -2) / d ** 0.5, dim=-1)
    return (w @ vh).transpose(1, 2).reshape(b, n, inner)


def test_chained_adapters_add_up_in_one_patch(sd15, adapter_file):
    from ipadapter_ext.ip_adapter_core.apply.attention import sdpa_attention

    h1, h2 = handle(adapter_file("ip-adapter_sd15")), handle(adapter_file("ip-adapter-plus_sd15"))
    m = apply(apply(sd15, h1, prompt(h1, weight=0.7)), h2, prompt(h2, weight=0.4, seed=1))
    patch = attn2(m)[("input", 4, 0)]
    assert len(patch.branches) == 2 and patch.previous is None
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 64, 640, generator=g).unbind(0)
    extra = dict(n_heads=8, dim_head=80, cond_or_uncond=[1, 0], sigmas=torch.tensor([1.0, 1.0]),
                 original_shape=[2, 4, 8, 8], attn_precision=None)
    got = patch(q, k, v, extra)
    want = sdpa_attention(q, k, v, 8)
    for (branch, scale), lam in zip(patch.branches, (0.7, 0.4)):
        assert scale == lam
        ipl = branch.adapter.model.layer(patch.layer.file_index)
        # row 0 is the uncond chunk ([1, 0]): negative tokens; row 1 positive
        tokens = torch.cat([branch.prompt.negative, branch.prompt.positive])
        want = want + lam * reference_image_attention(q, tokens, ipl.to_k_ip.weight, ipl.to_v_ip.weight, 8)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_clones_share_adapter_weights(sd15, adapter_file):
    h1, h2 = handle(adapter_file("ip-adapter_sd15")), handle(adapter_file("ip-adapter-plus_sd15"))
    m = apply(apply(sd15, h1, prompt(h1)), h2, prompt(h2))
    clones = [m.clone()]
    for _ in range(2):
        clones.append(clones[-1].clone())
    for c in clones:
        for key, patch in attn2(m).items():
            assert attn2(c)[key] is patch
    assert {id(p) for p in attn2(m)[("middle", 0, 0)].models()} == {id(h1.patcher), id(h2.patcher)}


def test_start_end_follow_sigmas(sd15, adapter_file):
    from ipadapter_ext.ip_adapter_core.apply.run_state import ALWAYS, GATED, RunState

    h = handle(adapter_file("ip-adapter_sd15"))
    m = apply(sd15, h, prompt(h, start=0.2, end=0.6))
    branch = attn2(m)[("input", 1, 0)].branches[0][0]
    ms = sd15.get_model_object("model_sampling")
    hi, lo = float(ms.percent_to_sigma(0.2)), float(ms.percent_to_sigma(0.6))
    run = RunState.for_sampling(m, torch.tensor([14.6, (hi + lo) / 2, 0.0]), (1, 4, 8, 8))
    plan = run.plan(branch)
    assert plan.mode == GATED and (plan.sigma_start, plan.sigma_end) == pytest.approx((hi, lo))
    for sigma, on in (((hi + lo) / 2, 1.0), (hi * 1.01, 0.0), (lo * 0.99, 0.0)):
        assert float(run.gate(branch, plan, torch.tensor([sigma, sigma]), torch.float32)) == on, sigma
    inside = RunState.for_sampling(m, torch.tensor([hi * 0.99, lo * 1.01]), (1, 4, 8, 8))
    assert inside.plan(branch).mode == ALWAYS  # the whole schedule is inside: no gate at all


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_any_model_dtype(sd15, adapter_file, dtype):
    h = handle(adapter_file("ip-adapter-plus_sd15"))  # fp16 weights, fp32 embeds
    patch = attn2(apply(sd15, h, prompt(h)))[("output", 6, 0)]
    q, k, v = (torch.randn(2, 64, 640).to(dtype) for _ in range(3))
    out = patch(q, k, v, dict(n_heads=8, dim_head=80, cond_or_uncond=[1, 0], sigmas=torch.tensor([1.0, 1.0]),
                              original_shape=[2, 4, 8, 8], attn_precision=None))
    assert out.dtype == dtype and torch.isfinite(out).all()


# ---------------------------------------------------------------- errors

def test_sdxl_adapter_on_sd15_model_is_refused(sd15, adapter_file):
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterMismatchError

    h = handle(adapter_file("ip-adapter_sdxl_vit-h"))
    with pytest.raises(IPAdapterMismatchError, match="SDXL IP-Adapter but the model is SD1.5"):
        apply(sd15, h, prompt(h))


def test_wrong_encoder_features_are_refused(adapter_file):
    from comfy.clip_vision import Output

    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
    from ipadapter_ext.nodes.image_prompt import IPAProject

    h = handle(adapter_file("ip-adapter_sd15"))
    bigg = Output()
    bigg["image_embeds"] = torch.randn(1, 1280)
    with pytest.raises(IPAdapterError, match=r"ViT-H/14.*got shape \(1, 1280\)"):
        IPAProject.execute(h, bigg, "concat")


def test_bad_mask_and_empty_images_are_refused(sd15, adapter_file):
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
    from ipadapter_ext.ip_adapter_core.prompt.vision import prepare

    h = handle(adapter_file("ip-adapter_sd15"))
    with pytest.raises(IPAdapterError, match="attn_mask: expected a MASK"):
        apply(sd15, h, prompt(h), mask=torch.ones(1, 1, 8, 8))
    cv = types.SimpleNamespace(image_mean=[0.5, 0.5, 0.5])
    with pytest.raises(IPAdapterError, match="at least one image"):
        prepare(cv, torch.zeros(0, 64, 64, 3), "center", None)


def test_plus_adapter_without_zero_image_features_says_what_to_do(adapter_file):
    from comfy.clip_vision import Output

    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
    from ipadapter_ext.nodes.image_prompt import IPAProject

    h = handle(adapter_file("ip-adapter-plus_sd15"))
    core_output = Output()  # as ComfyUI's own CLIPVisionEncode makes it
    core_output["penultimate_hidden_states"] = torch.randn(1, 257, 1280)
    with pytest.raises(IPAdapterError, match="IP-Adapter Encode Image"):
        IPAProject.execute(h, core_output, "concat")


# ---------------------------------------------------------------- through the sampler

def test_sampler_layouts_area_conds_and_masks(sd15, adapter_file, monkeypatch):
    """Real sampling: cfg 1 ([0]), CFG ([1, 0]), two positive conds ([1, 0, 0] style
    batching), an area cond (cropped calls) with an attention mask, a latent batch of 2.
    Every patched call must see a layout it can split and a mask sized to its own shape."""
    import comfy.sample

    from ipadapter_ext.ip_adapter_core.apply import unet_patch as patch_mod

    h = handle(adapter_file("ip-adapter_sd15"))
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0
    model = apply(sd15, h, prompt(h), mask=mask)
    seen = []
    real_call = patch_mod.Attn2Patch.__call__

    def spy(self, q, k, v, extra):
        seen.append((tuple(extra["cond_or_uncond"]), q.shape[0], tuple(extra["original_shape"][-2:]), q.shape[1]))
        return real_call(self, q, k, v, extra)

    monkeypatch.setattr(patch_mod.Attn2Patch, "__call__", spy)
    g = torch.Generator().manual_seed(9)
    ctx = lambda: torch.randn(1, 77, 768, generator=g)  # noqa: E731
    latent = torch.zeros(2, 4, 16, 16)
    noise = torch.randn(latent.shape, generator=g)
    pos, neg = [[ctx(), {}]], [[ctx(), {}]]
    pos2 = pos + [[ctx(), {"area": (8, 8, 0, 0), "strength": 1.0, "set_area_to_bounds": False}]]
    results = {}
    for name, cfg, positive in (("cfg1", 1.0, pos), ("cfg", 5.0, pos), ("area", 5.0, pos2)):
        seen.clear()
        results[name] = comfy.sample.sample(model, noise, 2, cfg, "euler", "normal", positive, neg,
                                            latent, seed=1)
        assert torch.isfinite(results[name]).all()
        layouts = {s[0] for s in seen}
        assert all(rows % len(lay) == 0 for lay, rows, _, _ in seen)
        if name == "cfg1":
            assert layouts == {(0,)}
        else:
            assert any(1 in lay and 0 in lay for lay in layouts), layouts
        if name == "area":
            assert any(hw == (8, 8) for _, _, hw, _ in seen), "no cropped call for the area cond"
    base = comfy.sample.sample(sd15, noise, 2, 5.0, "euler", "normal", pos, neg, latent, seed=1)
    assert not torch.allclose(base, results["cfg"])


def test_foreign_attn2_patch_is_chained_not_replaced(sd15, adapter_file):
    """Another extension's replace patch on the same key keeps running; ours adds to it."""
    calls = []

    def foreign(q, k, v, extra):
        calls.append(q.shape)
        return torch.zeros_like(q)

    m = sd15.clone()
    m.set_model_attn2_replace(foreign, "input", 1, 0)
    h = handle(adapter_file("ip-adapter_sd15"))
    patch = attn2(apply(m, h, prompt(h)))[("input", 1, 0)]
    assert patch.previous is foreign
    q = torch.randn(2, 16, 320)
    out = patch(q, q, q, dict(n_heads=8, dim_head=40, cond_or_uncond=[1, 0], sigmas=torch.tensor([1.0, 1.0]),
                              original_shape=[2, 4, 4, 4], attn_precision=None))
    assert calls and out.abs().sum() > 0  # foreign output (zeros) + our image branch
