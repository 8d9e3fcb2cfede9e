"""The patch at sampling time, in the real host: per-run state, refusals before the first step,
the call path's habits (no tensors from Python data, no host reads), foreign patches, model
layouts, guiders with more than two conds, area conds, Deep Shrink and context windows.
Each test here failed on the code before the run state existed (see the closing note of issue 8)."""
import copy

import pytest
import torch

from support.host_unet import comfy_on_cuda, sdxl_family_model
from test_host_nodes import apply, attn2, handle, prompt

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def sd15():
    from support.host_unet import comfy_model

    return comfy_model("sd15")


def left_half_mask():
    """A 64×64 mask: the left half of the picture."""
    m = torch.zeros(1, 64, 64)
    m[:, :, :32] = 1.0
    return m


def conds(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return [[[torch.randn(1, 77, 768, generator=g), {}]] for _ in range(n)]


def sample(model, latent, cfg=5.0, steps=2, positive=None, negative=None, seed=1):
    import comfy.sample

    pos, neg = conds()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(latent.shape, generator=g)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive or pos, negative or neg,
                               latent, seed=seed)


class Spy:
    """Records what our patches see (and the run state they get) while calling through."""

    def __init__(self, monkeypatch):
        from ipadapter_ext.ip_adapter_core.apply import unet_patch as patch_mod

        self.calls = []
        real = patch_mod.Attn2Patch.__call__

        def spy(patch, q, k, v, extra):
            self.calls.append((patch, q, k, v, dict(extra)))
            return real(patch, q, k, v, extra)

        monkeypatch.setattr(patch_mod.Attn2Patch, "__call__", spy)


# ---------------------------------------------------------------- 1. mask batch vs latent batch

def test_mask_batch_that_fits_no_latent_batch_is_refused_before_sampling(sd15, adapter_file, monkeypatch):
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError

    h = handle(adapter_file("ip-adapter_sd15"))
    model = apply(sd15, h, prompt(h), mask=torch.ones(2, 64, 64))
    spy = Spy(monkeypatch)
    with pytest.raises(IPAdapterError, match=r"attn_mask: the mask batch is 2 but the latent batch being sampled is 1.*must be 1"):
        sample(model, torch.zeros(1, 4, 16, 16))
    assert spy.calls == [], "the refusal must come before the first UNet call"
    # one mask per image is fine, and so is one mask for all
    assert torch.isfinite(sample(model, torch.zeros(2, 4, 16, 16), steps=1)).all()


def test_context_window_calls_get_their_frames_mask_rows(sd15, adapter_file):
    """A call that covers frames [1, 3] of a 4-frame latent (ComfyUI's context windows) gets masks 1 and 3."""
    from comfy.context_windows import IndexListContextWindow

    from ipadapter_ext.ip_adapter_core.apply.run_state import RunState

    h = handle(adapter_file("ip-adapter_sd15"))
    masks = torch.stack([torch.full((16, 16), v) for v in (0.1, 0.2, 0.3, 0.4)])
    branch = attn2(apply(sd15, h, prompt(h), mask=masks))[("input", 1, 0)].branches[0][0]
    run = RunState.for_sampling(sd15, torch.tensor([1.0, 0.0]), (4, 4, 16, 16))
    extra = dict(original_shape=[2, 4, 16, 16], cond_or_uncond=[1, 0],
                 context_window=IndexListContextWindow([1, 3], dim=0, total_frames=4))
    got = run.mask(branch, extra, 256, 4, torch.float32, "cpu")
    assert got.shape == (4, 256, 1)
    assert torch.allclose(got[:, 0, 0], torch.tensor([0.2, 0.4, 0.2, 0.4]))


# ---------------------------------------------------------------- 2. masks under Deep Shrink

@pytest.mark.parametrize("latent_hw,n,want", [((64, 64), 21 * 21, (21, 21)),    # factor 1.5 on 32x32
                                              ((13, 9), 7 * 5, (7, 5)),          # ceil-halved odd size
                                              ((27, 13), 7 * 3, (7, 3)),         # odd size, halved twice
                                              ((96, 64), 24 * 16, (24, 16))])
def test_token_grid_from_count_and_aspect(latent_hw, n, want):
    from ipadapter_ext.ip_adapter_core.apply.masks import tokens_hw

    assert tokens_hw(latent_hw, n) == want


@pytest.mark.parametrize("factor", [1.5, 2.0])
def test_mask_under_deep_shrink(sd15, adapter_file, factor):
    """PatchModelAddDownscale (round(h/f)) in the chain with a mask: sampling runs (it raised
    'no downscale of a latent has N tokens' before)."""
    from comfy_extras.nodes_model_downscale import PatchModelAddDownscale

    h = handle(adapter_file("ip-adapter_sd15"))
    shrunk = PatchModelAddDownscale.execute(sd15, 3, factor, 0.0, 1.0, True, "bicubic", "bicubic").result[0]
    mask = left_half_mask()
    out = sample(apply(shrunk, h, prompt(h), mask=mask), torch.zeros(1, 4, 18, 18), steps=1)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- 3. the call path builds nothing from Python data

@pytest.mark.parametrize("variant", ["linear", "precise, K+mean(V), λ schedule", "one per frame, cross-fade, K+V"])
def test_call_path_makes_no_tensors_from_python_data_and_reads_nothing_back(sd15, adapter_file, monkeypatch,
                                                                            variant):
    """After the first call of a layout, a call creates no tensor from Python lists/numbers and
    reads no tensor on the host (item/float/bool/tolist): on a GPU each would be a sync. Also with
    a routed weight type, λ inside the attention and λ looked up per step, and with one image per
    frame (two images cross-fading over 4 frames, λ per frame inside K'/V')."""
    from ipadapter_ext.nodes.frames import IPAFrames
    from ipadapter_ext.nodes.image_prompt import IPAProject
    from ipadapter_ext.nodes.weight import IPASchedule, IPAWeight

    from test_host_nodes import features

    h = handle(adapter_file("ip-adapter_sd15"))
    mask = left_half_mask()
    p = prompt(h, start=0.1, end=0.9)
    frames = 1
    if variant.startswith("one per frame"):
        frames = 4
        p = IPAProject.execute(h, features(h.config, n=2), "one per frame").result[0]
        p = IPAFrames.execute(p, 2, 1, "ease in", [1.0, 0.5, 2.0, 0.7]).result[0]
        p = IPAWeight.execute(p, 1.0, "all", "", 0.1, 0.9, "linear", "K+V").result[0]
    elif variant != "linear":
        p = IPAWeight.execute(p, 1.0, "all", "", 0.1, 0.9, "composition precise", "K+mean(V) w/ C penalty",
                              1.0, 0.5).result[0]
        p = IPASchedule.execute(p, "linear", 0.2, "").result[0]
    model = apply(sd15, h, p, mask=mask)  # gated range + mask: every path
    spy = Spy(monkeypatch)
    sample(model, torch.zeros(frames, 4, 16, 16), steps=1)
    assert spy.calls
    # replay the run's calls with a run state made as the sampler's wrapper makes it: one pass
    # to fill the per-layout caches (as the first step does), then the checked pass
    from ipadapter_ext.ip_adapter_core.apply.run_state import RunState
    from ipadapter_ext.ip_adapter_core.apply.transformer_options import RUN_KEY

    run = RunState.for_sampling(model, torch.tensor([14.6, 7.0, 0.0]), (frames, 4, 16, 16))
    run.prepare({b for p in attn2(model).values() for b, _ in p.branches})
    calls = list(spy.calls)  # the spy keeps recording during the replay
    for patch, q, k, v, extra in calls:
        extra[RUN_KEY] = run
        patch(q, k, v, extra)
    forbidden = []

    def recording(owner, name):
        real = getattr(owner, name)

        def f(*a, **k):
            forbidden.append(name)
            return real(*a, **k)
        return f

    with monkeypatch.context() as mp:
        for name in ("tensor", "as_tensor", "from_numpy", "scalar_tensor"):
            mp.setattr(torch, name, recording(torch, name))
        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
            mp.setattr(torch.Tensor, name, recording(torch.Tensor, name))
        for patch, q, k, v, extra in calls:
            patch(q, k, v, extra)
    assert forbidden == [], "host reads or tensors from Python data in the per-call path"


@pytest.mark.skipif(not comfy_on_cuda(), reason="needs CUDA with ComfyUI on the GPU (run the tests with "
                    "IPADAPTER_TEST_GPU=1 on a CUDA machine): torch.cuda.set_sync_debug_mode is checked only there")
def test_no_cuda_sync_in_patched_layers_on_gpu(adapter_file):  # pragma: no cover - GPU only
    """On a GPU: after a warm-up evaluation, a patched UNet evaluation makes no host-device sync."""
    from support.host_unet import comfy_model, unet_forward

    from ipadapter_ext.ip_adapter_core.apply.run_state import RunState

    model = comfy_model("sd15", device="cuda")
    h = handle(adapter_file("ip-adapter_sd15"))
    mask = left_half_mask()
    m = apply(model, h, prompt(h, start=0.1, end=0.9), mask=mask)
    import comfy.model_management as mm

    mm.load_models_gpu([m] + m.get_nested_additional_models())
    x = torch.randn(2, 4, 16, 16, device="cuda")
    sigma = torch.tensor([7.0, 7.0], device="cuda")
    ctx = torch.randn(2, 77, 768, device="cuda")
    run = RunState.for_sampling(m, torch.tensor([14.0, 7.0, 0.0]), x.shape)
    unet_forward(m, x, sigma, ctx, (1, 0), run=run)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        unet_forward(m, x, sigma, ctx, (1, 0), run=run)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------- 4. foreign patches under ours

class ForeignPatch:
    """Another extension's attn2 patch that carries its own model and expects to be copied."""

    copies = 0

    def __init__(self, device="cpu", marker=None):
        self.device, self.marker = device, marker if marker is not None else object()
        self.calls = 0

    def __call__(self, q, k, v, extra):
        self.calls += 1
        return torch.zeros_like(q)

    def to(self, device):
        return ForeignPatch(device, self.marker)

    def models(self):
        return [self.marker]

    def __deepcopy__(self, memo):
        ForeignPatch.copies += 1
        return ForeignPatch(self.device, self.marker)


def test_foreign_patch_to_models_two_tuple_key_and_copies(sd15, adapter_file):
    h = handle(adapter_file("ip-adapter_sd15"))
    m = sd15.clone()
    foreign = ForeignPatch()
    m.set_model_attn2_replace(foreign, "input", 1)  # a 2-tuple key: ComfyUI falls back to it
    patch = attn2(apply(m, h, prompt(h)))[("input", 1, 0)]
    # chained (ComfyUI's clone() inside apply copied it, as the foreign patch asks)
    assert isinstance(patch.previous, ForeignPatch) and patch.previous.marker is foreign.marker, \
        "the 2-tuple foreign patch was shadowed, not chained"
    foreign = patch.previous
    # the memory manager sees the foreign patch's models too, and to() reaches it
    assert foreign.marker in patch.models() and h.patcher in patch.models()
    moved = patch.to(torch.device("meta"))
    assert moved.previous.device == torch.device("meta") and moved.branches == patch.branches
    # clones copy the foreign patch the way it expects, and still share our branches
    before = ForeignPatch.copies
    clone = copy.deepcopy(patch)
    assert ForeignPatch.copies == before + 1 and clone.previous is not foreign and clone.branches is patch.branches
    plain = attn2(apply(sd15, h, prompt(h)))[("input", 1, 0)]
    assert copy.deepcopy(plain) is plain  # nothing foreign: shared as before
    q = torch.randn(2, 16, 320)
    out = patch(q, q, q, dict(n_heads=8, cond_or_uncond=[1, 0], sigmas=torch.tensor([1.0, 1.0]),
                              original_shape=[2, 4, 4, 4]))
    assert foreign.calls == 1 and out.abs().sum() > 0


# ---------------------------------------------------------------- 5. cache lifetime

def test_run_state_is_emptied_after_sampling_and_patches_hold_no_run_tensors(sd15, adapter_file, monkeypatch):
    from ipadapter_ext.ip_adapter_core.apply import run_state, transformer_options

    h = handle(adapter_file("ip-adapter_sd15"))
    mask = torch.ones(1, 64, 64)
    model = apply(sd15, h, prompt(h, start=0.0, end=0.5), mask=mask)
    runs = []
    real_free = run_state.RunState.free

    def free(self):
        runs.append((self, len(self.cached_tensors())))
        real_free(self)

    monkeypatch.setattr(run_state.RunState, "free", free)
    sample(model, torch.zeros(1, 4, 16, 16), steps=2)
    sample(model, torch.zeros(1, 4, 16, 16), steps=2)
    assert len(runs) == 2 and runs[0][0] is not runs[1][0], "one run state per sampling run"
    for run, held in runs:
        assert held > 0 and run.cached_tensors() == [], "K'/V', rows, masks and gates are dropped at the end"
    # the model's own options hold no run state, and a patch holds no tensor but the node-time mask
    assert transformer_options.RUN_KEY not in model.model_options.get("transformer_options", {})
    for patch in attn2(model).values():
        tensors = [v for v in vars(patch).values() if isinstance(v, torch.Tensor)]
        for branch, _ in patch.branches:
            tensors += [v for v in vars(branch).values() if isinstance(v, torch.Tensor)]
        assert all(t is mask or t.data_ptr() == mask.data_ptr() for t in tensors)
        assert all(t.device.type == "cpu" for t in tensors)


# ---------------------------------------------------------------- 6. start/end resolved at sample time

def test_range_follows_model_sampling_patched_after_apply(sd15, adapter_file, monkeypatch):
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    from ipadapter_ext.ip_adapter_core.apply import run_state

    h = handle(adapter_file("ip-adapter_sd15"))
    applied = apply(sd15, h, prompt(h, start=0.3, end=0.7))
    for sampling, zsnr in (("lcm", False), ("eps", True)):
        patched = ModelSamplingDiscrete().patch(applied, sampling, zsnr)[0]
        ms = patched.get_model_object("model_sampling")
        plans = []
        real_plan = run_state.RunState.plan

        def plan(self, branch):
            p = real_plan(self, branch)
            plans.append(p)
            return p

        monkeypatch.setattr(run_state.RunState, "plan", plan)
        sample(patched, torch.zeros(1, 4, 8, 8), steps=1)
        monkeypatch.undo()
        want = (float(ms.percent_to_sigma(0.3)), float(ms.percent_to_sigma(0.7)))
        old = sd15.get_model_object("model_sampling")
        assert want != pytest.approx((float(old.percent_to_sigma(0.3)), float(old.percent_to_sigma(0.7))))
        assert plans and all((p.sigma_start, p.sigma_end) == pytest.approx(want) for p in plans), sampling


# ---------------------------------------------------------------- 7. the whole config is compared

def test_embeds_of_another_encoder_are_refused(sd15, adapter_file):
    """Same token count and width, other encoder (ViT-bigG vs ViT-H): refused (was accepted)."""
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterMismatchError

    vit_h, vit_g = handle(adapter_file("ip-adapter_sd15")), handle(adapter_file("ip-adapter_sd15_vit-G"))
    emb = prompt(vit_h)
    with pytest.raises(IPAdapterMismatchError, match="embeds: made by a different kind of adapter.*ViT-H/14"):
        apply(sd15, vit_g, emb)


# ---------------------------------------------------------------- 8. model layouts

@pytest.mark.parametrize("name,changes", [
    ("SSD1B", dict(transformer_depth=[0, 0, 2, 2, 4, 4], transformer_depth_output=[0, 0, 0, 1, 1, 1, 4, 4, 4],
                   transformer_depth_middle=0)),
    ("Segmind_Vega", dict(transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
                          transformer_depth_middle=0)),
])
def test_distilled_sdxl_models_are_refused(adapter_file, name, changes):
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterMismatchError

    model, model_config = sdxl_family_model(**changes)
    assert type(model_config).__name__ == name  # ComfyUI itself detects the distilled model
    h = handle(adapter_file("ip-adapter_sdxl_vit-h"))
    with pytest.raises(IPAdapterMismatchError, match=r"model: .*layers differ.*SSD-1B"):
        apply(model, h, prompt(h))


def test_standard_sdxl_model_is_accepted_on_meta(adapter_file):
    model, _ = sdxl_family_model()
    h = handle(adapter_file("ip-adapter_sdxl_vit-h"))
    assert len(attn2(apply(model, h, prompt(h)))) == 70


# ---------------------------------------------------------------- 9. guiders with more than two conds

def test_dual_cfg_guider_gives_negative_tokens_to_the_negative_cond(sd15, adapter_file, monkeypatch):
    """DualCFGGuider calls calc_cond_batch with [negative, middle, positive]: cond_or_uncond 0 is the
    negative there. Only the negative cond gets the negative image tokens."""
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG

    from ipadapter_ext.ip_adapter_core.apply.attention import NEGATIVE, POSITIVE

    h = handle(adapter_file("ip-adapter_sd15"))
    model = apply(sd15, h, prompt(h))
    from ipadapter_ext.ip_adapter_core.apply import run_state

    seen = set()
    real_roles = run_state.RunState.roles

    def roles(self, extra):
        r = real_roles(self, extra)
        seen.add((tuple(extra["cond_or_uncond"]), r))
        return r

    monkeypatch.setattr(run_state.RunState, "roles", roles)
    pos, mid = conds(1)
    neg = conds(2, 1)[0]
    guider = Guider_DualCFG(model)
    guider.set_conds(pos, mid, neg)
    guider.set_cfg(5.0, 3.0, nested=True)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 2)
    latent = torch.zeros(1, 4, 8, 8)
    out = guider.sample(torch.randn(latent.shape), latent, comfy.samplers.sampler_object("euler"), sigmas, seed=1)
    assert torch.isfinite(out).all()
    by_code = {code: role for layout, rs in seen for code, role in zip(layout, rs)}
    assert by_code == {0: NEGATIVE, 1: POSITIVE, 2: POSITIVE}, seen


# ---------------------------------------------------------------- 10. area conds crop the mask

def test_area_cond_call_gets_the_mask_of_its_area(sd15, adapter_file, monkeypatch):
    """Mask = left half of the picture; an area cond over the top-left quarter lies wholly inside
    it, so its cropped calls see a mask of ones (the old rule squeezed the whole mask: half ones)."""
    from ipadapter_ext.ip_adapter_core.apply import run_state

    h = handle(adapter_file("ip-adapter_sd15"))
    mask = left_half_mask()
    model = apply(sd15, h, prompt(h), mask=mask)
    got = []
    real = run_state.RunState.mask

    def spy(self, branch, extra, n, rows, dtype, device):
        m = real(self, branch, extra, n, rows, dtype, device)
        got.append((tuple(extra["original_shape"][-2:]), tuple(extra["cond_or_uncond"]), m))
        return m

    monkeypatch.setattr(run_state.RunState, "mask", spy)
    pos, neg = conds(3)
    pos = pos + [[torch.randn(1, 77, 768), {"area": (8, 8, 0, 0), "strength": 1.0, "set_area_to_bounds": False}]]
    sample(model, torch.zeros(1, 4, 16, 16), positive=pos, negative=neg, steps=1)
    cropped = [m for hw, _, m in got if hw == (8, 8)]
    full = [m for hw, _, m in got if hw == (16, 16)]
    assert cropped and full
    assert all(torch.allclose(m, torch.ones_like(m)) for m in cropped)
    assert all(0.4 < float(m.mean()) < 0.6 for m in full)
