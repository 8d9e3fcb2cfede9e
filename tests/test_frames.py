"""Animation (one image prompt per frame): frame plans against plans worked out by hand; per-frame weight
curves against their formulas; joined weight lists by hand and the text prompt schedule against a transcription
of ComfyUI_IPAdapter_plus's function; and in the real host: at one layer each row of a 4-frame batch attends to
its own image's K'/V' (cond and uncond rows) with its frame's λ, computed independently here; a sampled
4-frame batch equals four 1-frame samplings with one image each, also under ComfyUI's context windows
(ContextWindowsManual, windows of 2) where a window sees only its frames' images."""
import logging
import math

import pytest
import torch

from ipadapter_ext.ip_adapter_core.prompt import frames as F
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
from ipadapter_ext.ip_adapter_core.input_bounds import MAX_FRAMES

log = logging.getLogger("ipadapter.tests.frames")


# ---------------------------------------------------------------- plans (pure)

# (images, frames, frames_per_image, transition_frames) -> track images, track weights; worked out by hand
PLANS = {
    (4, 4, 1, 0): [((0, 1, 2, 3),), ((1, 1, 1, 1),)],
    (2, 5, 1, 0): [((0, 1, 1, 1, 1),), ((1,) * 5,)],                       # the last image holds
    (2, 6, 0, 0): [((0, 0, 0, 1, 1, 1),), ((1,) * 6,)],                    # spread evenly
    (3, 8, 0, 0): [((0, 0, 0, 1, 1, 2, 2, 2),), ((1,) * 8,)],              # starts round(8/3)=3, round(16/3)=5
    (3, 8, 2, 0): [((0, 0, 1, 1, 2, 2, 2, 2),), ((1,) * 8,)],
    (1, 3, 1, 0): [((0, 0, 0),), ((1, 1, 1),)],
    (4, 2, 1, 0): [((0, 1),), ((1, 1),)],                                  # images 2, 3 get no frame
    (2, 4, 1, 3): [((0, 1, 1, 1),), ((1,) * 4,)],                          # a 1-frame stretch cannot fade
    # image 0 holds frames 0-2, its last 2 fade into image 1: shares j/(t+1) = 1/3, 2/3
    (2, 6, 3, 2): [((0, 0, 0, 1, 1, 1), (0, 1, 1, 1, 1, 1)),
                   ((1, 2 / 3, 1 / 3, 1, 1, 1), (0, 1 / 3, 2 / 3, 0, 0, 0))],
    # transitions longer than a stretch allows: each image still alone on one frame
    (3, 6, 2, 5): [((0, 0, 1, 1, 2, 2), (0, 1, 1, 2, 2, 2)),
                   ((1, 0.5, 1, 0.5, 1, 1), (0, 0.5, 0, 0.5, 0, 0))],
}


@pytest.mark.parametrize("key", list(PLANS))
def test_frame_plan_by_hand(key):
    n, f, per, t = key
    plan = F.plan_frames(F.FrameSpec(per, t), n, f)
    want_images, want_weights = PLANS[key]
    assert plan.images == want_images
    assert len(plan.weights) == len(want_weights)
    for got, want in zip(plan.weights, want_weights):
        assert got == pytest.approx(want, abs=1e-12)


def test_transition_curves_and_frame_weights_multiply():
    spec = F.FrameSpec(4, 3, "ease in-out", weights=(2.0, 2.0, 2.0, 0.5))
    plan = F.plan_frames(spec, 2, 8)
    shares = [(1 - math.cos(j / 4 * math.pi)) / 2 for j in (1, 2, 3)]  # frames 1, 2, 3 fade into image 1
    assert plan.images[1] == (0, 1, 1, 1, 1, 1, 1, 1)
    assert plan.weights[1] == pytest.approx((0, 2 * shares[0], 2 * shares[1], 0.5 * shares[2], 0, 0, 0, 0))
    assert plan.weights[0] == pytest.approx((2, 2 * (1 - shares[0]), 2 * (1 - shares[1]), 0.5 * (1 - shares[2]),
                                             0.5, 0.5, 0.5, 0.5))  # the list's last value repeats


def test_short_and_long_weight_lists_and_unused_images_are_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="ipadapter"):
        assert F.frame_weights(F.FrameSpec(weights=(0.5, 1.0)), 4) == [0.5, 1.0, 1.0, 1.0]
        assert F.frame_weights(F.FrameSpec(weights=(1, 2, 3)), 2) == [1, 2]
        F.plan_frames(F.FrameSpec(), 4, 2)
    text = caplog.text
    assert "2 weights for 4 frames; the last one repeats" in text
    assert "3 weights for 2 frames; the extra ones are not used" in text
    assert "image(s) [2, 3] get no frame" in text


@pytest.mark.parametrize("curve,want", [
    ("linear", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("ease in", [1 - math.cos(t * math.pi / 2) for t in (0, .25, .5, .75, 1)]),
    ("ease out", [math.sin(t * math.pi / 2) for t in (0, .25, .5, .75, 1)]),
    ("ease in-out", [(1 - math.cos(t * math.pi)) / 2 for t in (0, .25, .5, .75, 1)]),
    ("alternate", [0.0, 1.0, 0.0, 1.0, 0.0]),
])
def test_curve_weights(curve, want):
    got = F.curve_weights(curve, 5, 0.0, 1.0)
    assert got == pytest.approx(want, abs=1e-12)
    assert got[0] == 0.0 and (curve == "alternate" or got[-1] == pytest.approx(1.0))


def test_random_weights_are_seeded_and_in_range():
    a = F.curve_weights("random", 64, 0.2, 0.6, seed=7)
    assert a == F.curve_weights("random", 64, 0.2, 0.6, seed=7)
    assert a != F.curve_weights("random", 64, 0.2, 0.6, seed=8)
    assert all(0.2 <= x <= 0.6 for x in a) and max(a) - min(a) > 0.3
    assert F.curve_weights("linear", 1, 0.3, 0.9) == [0.3]


@pytest.mark.parametrize("make,fragment", [
    (lambda: F.FrameSpec(frames_per_image=-1), "expected numbers >= 0"),
    (lambda: F.FrameSpec(transition="bounce"), "transition: expected one of linear"),
    (lambda: F.FrameSpec(weights=()), "the list is empty"),
    (lambda: F.FrameSpec(weights=(1.0, float("nan"))), "finite"),
    (lambda: F.curve_weights("wobble", 4, 0, 1), "curve: expected one of"),
    (lambda: F.curve_weights("linear", 0, 0, 1), "at least 1 frame"),
    (lambda: F.parse_weights("1, 2"), "expected a list of numbers"),
    (lambda: F.parse_weights([1.0, True]), "expected a list of numbers"),
])
def test_bad_frame_inputs_are_refused_by_name(make, fragment):
    with pytest.raises(IPAdapterError, match=fragment):
        make()


def test_parse_weights_accepts_lists_numbers_and_tensors():
    assert F.parse_weights(None) is None
    assert F.parse_weights(0.5) == (0.5,)
    assert F.parse_weights([1, 0.5]) == (1.0, 0.5)
    assert F.parse_weights(torch.tensor([[1.0], [0.25]])) == (1.0, 0.25)


def test_row_tracks_route_each_chunk_to_its_sets():
    """Rows = chunks (cond, uncond, ...) × frames; set kind k of image i is k·N + i, the zero set 2N."""
    plan = F.plan_frames(F.FrameSpec(weights=(1.0, 0.5, 1.0, 2.0)), 4, 4)
    (index, w), = F.row_tracks(plan, (0, 1), 2, [1, 3], 4, zero_set=2)
    assert index == [1, 3, 5, 7] and w == [0.5, 2.0, 0.5, 2.0]
    (index, w), = F.row_tracks(F.plan_frames(F.FrameSpec(), 4, 4), (2, 0), 4, None, 4, zero_set=2)
    assert index == [8, 8, 8, 8, 0, 1, 2, 3] and w is None


def test_join_weights_puts_lists_and_numbers_one_after_the_other():
    """As ComfyUI_IPAdapter_plus's IPAdapterCombineWeights: list + list, a number counting as a list of one."""
    assert F.join_weights([1.0, 0.5], [0.25]) == [1.0, 0.5, 0.25]
    assert F.join_weights(0.5, [1, 2]) == [0.5, 1.0, 2.0]
    assert F.join_weights(0.5, 0.75) == [0.5, 0.75]
    assert F.join_weights(F.curve_weights("linear", 3, 0, 1), F.curve_weights("linear", 2, 1, 0)) == \
        [0.0, 0.5, 1.0, 1.0, 0.0]
    with pytest.raises(IPAdapterError, match="weights_1 and weights_2 joined: 100,001 weights; at most 100,000"):
        F.join_weights([1.0] * MAX_FRAMES, 1.0)
    with pytest.raises(IPAdapterError, match="weights_2: expected a list of numbers"):
        F.join_weights(1.0, "1, 2")
    with pytest.raises(IPAdapterError, match="weights_1: nothing connected"):
        F.join_weights(None, 1.0)


def plus_prompt_schedule(weights_strategy, prompt=""):
    """ComfyUI_IPAdapter_plus's IPAdapterPromptScheduleFromWeightsStrategy.prompt_schedule, transcribed
    statement by statement from their IPAdapterPlus.py (independent of ours: string building by +=)."""
    frames = weights_strategy["frames"]
    add_starting_frames = weights_strategy["add_starting_frames"]
    add_ending_frames = weights_strategy["add_ending_frames"]
    frame_count = weights_strategy["frame_count"]
    out = ""
    prompt = [p for p in prompt.split("\n") if p.strip() != ""]
    if len(prompt) > 0 and frame_count > 0:
        if len(prompt) > frame_count:
            prompt = prompt[:frame_count]
        elif len(prompt) < frame_count:
            prompt += [prompt[-1]] * (frame_count - len(prompt))
        if add_starting_frames > 0:
            out += f"\"0\": \"{prompt[0]}\",\n"
        for i in range(frame_count):
            out += f"\"{i * frames + add_starting_frames}\": \"{prompt[i]}\",\n"
        if add_ending_frames > 0:
            out += f"\"{frame_count * frames + add_starting_frames}\": \"{prompt[-1]}\",\n"
    return out


@pytest.mark.parametrize("prompt", ["a cat\n\n  \na dog, running\na bird", "only one", "", "\n \n", "x\ny\nz\nw\nv"])
@pytest.mark.parametrize("frames,count,start,end", [(16, 3, 0, 0), (4, 3, 2, 5), (0, 2, 1, 0), (1, 1, 0, 3),
                                                    (3, 0, 2, 2), (12, 6, 4, 4)])
def test_prompt_schedule_matches_the_popular_extension(prompt, frames, count, start, end):
    strategy = dict(frames=frames, add_starting_frames=start, add_ending_frames=end, frame_count=count)
    want = plus_prompt_schedule(strategy, prompt)
    assert F.prompt_schedule(prompt, frames, count, start, end) == want
    lines = want.splitlines()
    assert len(lines) <= count + 2 and (bool(lines) == (count > 0 and bool(prompt.strip())))


def test_prompt_schedule_by_hand_and_its_bounds():
    assert F.prompt_schedule("a\nb", 8, 3, 2, 1) == '"0": "a",\n"2": "a",\n"10": "b",\n"18": "b",\n"26": "b",\n'
    with pytest.raises(IPAdapterError, match="image: expected 0 to 100,000 images; got 100,001"):
        F.prompt_schedule("a", 1, MAX_FRAMES + 1)
    with pytest.raises(IPAdapterError, match="frames: expected 0 to 100,000 frames; got -1"):
        F.prompt_schedule("a", -1, 2)


@pytest.mark.host
def test_join_and_prompt_schedule_nodes():
    from ipadapter_ext.nodes.frames import IPAJoinFrameWeights, IPAPromptSchedule

    assert IPAJoinFrameWeights.execute([1.0, 0.5], 0.25).result == ([1.0, 0.5, 0.25], 3)
    # the image's batch size is the number of prompts keyed; no image: an empty schedule, as theirs
    assert IPAPromptSchedule.execute("a\nb", 4, 0, 0, torch.zeros(3, 2, 2, 3)).result == \
        ('"0": "a",\n"4": "b",\n"8": "b",\n',)
    assert IPAPromptSchedule.execute("a\nb", 4, 0, 0).result == ("",)


# ---------------------------------------------------------------- in the host

def per_frame(h, n, seed=0, frames=None):
    from test_host_nodes import features

    from ipadapter_ext.nodes.frames import IPAFrames
    from ipadapter_ext.nodes.image_prompt import IPAProject

    emb = IPAProject.execute(h, features(h.config, n=n, seed=seed), "one per frame").result[0]
    assert emb.positive.shape[0] == n and emb.negative.shape[0] == n
    return emb if frames is None else IPAFrames.execute(emb, *frames).result[0]


def weighted(emb, weight, scaling="V only"):
    from ipadapter_ext.nodes.weight import IPAWeight

    return IPAWeight.execute(emb, weight, "all", "", 0.0, 1.0, "linear", scaling).result[0]


def reference_kv(h, layer, tokens):
    """K'/V' of one layer straight from the adapter file's weights (not through the patch)."""
    ipl = h.model.layer(layer.file_index)
    with torch.no_grad():
        return tokens @ ipl.to_k_ip.weight.float().T, tokens @ ipl.to_v_ip.weight.float().T


def sdpa(q, k, v, heads):
    b, n, c = q.shape
    d = c // heads
    split = lambda t: t.reshape(t.shape[0], -1, heads, d).transpose(1, 2)  # noqa: E731
    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, n, c)


# case -> (images, IPAFrames inputs, per frame [(image, share of λ), ...]) worked out by hand
CASES = {
    "one per frame": (4, (1, 0, "linear", [1.0, 0.5, 2.0, 0.0]), [[(0, 1.0)], [(1, 0.5)], [(2, 2.0)], [(3, 0.0)]]),
    "cross-fade": (2, (2, 1, "linear", None), [[(0, 1.0)], [(0, 0.5), (1, 0.5)], [(1, 1.0)], [(1, 1.0)]]),
}


@pytest.fixture(scope="module")
def sd15():
    from support.host_unet import comfy_model

    return comfy_model("sd15")


@pytest.mark.host
@pytest.mark.parametrize("scaling", ["V only", "K+V w/ C penalty"])
@pytest.mark.parametrize("case", list(CASES))
def test_each_row_attends_to_its_frames_image_with_its_lambda(sd15, adapter_file, scaling, case):
    """Attn2Patch at input 1 (320 wide, 5 heads) on a 4-frame batch, cond rows then uncond rows: row
    (chunk, frame f) = text attention + Σ over f's images of λ·share · Attn(q, K'_i, V'_i), with K'/V' of
    image i's positive tokens on cond rows, of its negative tokens on uncond rows."""
    from test_host_nodes import apply, attn2, handle

    n, frames, mix = CASES[case]
    lam = 0.8
    h = handle(adapter_file("ip-adapter_sd15"))
    emb = weighted(per_frame(h, n, frames=frames), lam, scaling)
    key = ("input", 1, 0)
    patch = attn2(apply(sd15, h, emb))[key]
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(8, t, 320, generator=g) for t in (64, 77, 77))
    extra = dict(n_heads=5, dim_head=64, original_shape=[8, 4, 8, 8], cond_or_uncond=[0, 1])
    got = patch(q, k, v, extra)

    layer = patch.layer
    want = sdpa(q, k, v, 5)
    penalty = 320 / 1280 if scaling != "V only" else None
    for chunk, tokens in enumerate((emb.positive, emb.negative)):
        for f in range(4):
            r = chunk * 4 + f
            for image, share in mix[f]:
                kk, vv = reference_kv(h, layer, tokens[image:image + 1].float())
                w = lam * share
                if penalty is None:
                    want[r:r + 1] += w * sdpa(q[r:r + 1], kk, vv, 5)
                else:
                    want[r:r + 1] += sdpa(q[r:r + 1], kk * w * penalty, vv * w * penalty, 5)
    log.info("per-row attention, %s, %s: max |difference| %.2e", case, scaling, float((got - want).abs().max()))
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()
    # a frame's rows really differ by image: frame 0 with frame 2's image is not the same row
    if case == "one per frame":
        kk, vv = reference_kv(h, layer, emb.positive[2:3].float())
        wrong = sdpa(q[:1], k[:1], v[:1], 5) + lam * sdpa(q[:1], kk, vv, 5)
        assert (got[:1] - wrong).abs().max() > 1e-3


def sample_with(model, noise, steps=1, cfg=5.0):
    import comfy.sample
    from test_host_runtime import conds

    pos, neg = conds()
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", pos, neg, torch.zeros_like(noise), seed=1)


@pytest.fixture(scope="module")
def frame_runs(sd15, adapter_file):
    """A 4-frame batch with 4 images and per-frame λ from IP-Adapter Frame Weights, sampled whole and
    with context windows of 2, and each frame sampled alone with its image and λ."""
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode
    from test_host_nodes import apply, features, handle

    from ipadapter_ext.nodes.frames import IPAFrameWeights
    from ipadapter_ext.nodes.image_prompt import IPAProject

    h = handle(adapter_file("ip-adapter_sd15"))
    lams = IPAFrameWeights.execute(4, "linear", 1.0, 0.25, 0).result[0]
    assert lams == pytest.approx([1.0, 0.75, 0.5, 0.25])
    model = apply(sd15, h, weighted(per_frame(h, 4, seed=5, frames=(1, 0, "linear", lams)), 0.8))
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    whole = sample_with(model, noise)
    windowed_model = ContextWindowsManualNode.execute(model, 2, 0, "standard_static", 1, False, "pyramid", 0,
                                                      False).result[0]
    windows = []
    from ipadapter_ext.ip_adapter_core.apply import unet_patch as patch_mod

    real = patch_mod.Attn2Patch.__call__

    def spy(patch, q, k, v, extra):
        w = extra.get("context_window")
        windows.append((tuple(w.index_list) if w is not None else None, q.shape[0]))
        return real(patch, q, k, v, extra)

    patch_mod.Attn2Patch.__call__ = spy
    try:
        windowed = sample_with(windowed_model, noise)
    finally:
        patch_mod.Attn2Patch.__call__ = real
    feats = features(h.config, n=4, seed=5)
    alone = []
    for i in range(4):
        one = type(feats)()
        for name in ("image_embeds", "penultimate_hidden_states"):
            one[name] = feats[name][i:i + 1]
        emb = IPAProject.execute(h, one, "concat").result[0]
        alone.append(sample_with(apply(sd15, h, weighted(emb, 0.8 * lams[i])), noise[i:i + 1]))
    return whole, windowed, torch.cat(alone), set(windows)


def rel(a, b):
    """Largest difference per frame relative to the frame's largest value (random UNets give values in
    the hundreds), over all frames."""
    return float(((a - b).abs().amax(dim=(1, 2, 3)) / b.abs().amax(dim=(1, 2, 3))).max())


@pytest.mark.host
def test_a_frame_batch_equals_each_frame_sampled_alone_with_its_image(frame_runs):
    whole, _, alone, _ = frame_runs
    log.info("4-frame batch vs 4 single-frame runs: %.2e; frame 1 vs frame 0's single run: %.2e",
             rel(whole, alone), rel(whole[1:2], alone[0:1]))
    assert rel(whole, alone) < 1e-5, rel(whole, alone)
    # and the images and λ matter: frame 1 is not what frame 0's image gives
    assert rel(whole[1:2], alone[0:1]) > 1e-2


@pytest.mark.host
def test_context_windows_give_each_window_its_frames_images(frame_runs):
    """ContextWindowsManual (length 2, no overlap): the UNet sees frames [0, 1] and [2, 3] separately
    (2 frames × cond/uncond = 4 rows per call), and each frame still gets its own image and λ."""
    whole, windowed, alone, seen = frame_runs
    assert seen == {((0, 1), 4), ((2, 3), 4)}, seen
    log.info("context windows of 2 vs single-frame runs: %.2e", rel(windowed, alone))
    assert rel(windowed, alone) < 1e-5, rel(windowed, alone)


@pytest.mark.host
def test_a_call_of_part_of_the_frames_without_a_window_is_refused(sd15, adapter_file):
    from test_host_nodes import apply, attn2, handle

    from ipadapter_ext.ip_adapter_core.apply.run_state import RunState

    h = handle(adapter_file("ip-adapter_sd15"))
    patch = attn2(apply(sd15, h, per_frame(h, 4)))[("input", 1, 0)]
    run = RunState.for_sampling(sd15, torch.tensor([1.0, 0.0]), (4, 4, 8, 8))
    q = torch.randn(4, 64, 320)
    extra = dict(n_heads=5, dim_head=64, original_shape=[4, 4, 8, 8], cond_or_uncond=[0, 1], ipadapter_run=run)
    with pytest.raises(IPAdapterError, match=r"embeds \(one per frame\): a call covers 2 of the 4 latent images"):
        patch(q, torch.randn(4, 77, 320), torch.randn(4, 77, 320), extra)


@pytest.mark.host
def test_per_frame_embeds_save_load_and_combine(tmp_path, adapter_file):
    from test_host_nodes import handle

    from ipadapter_ext.ip_adapter_core.prompt.combine import combine_prompts
    from ipadapter_ext.ip_adapter_core.prompt.embeds_io import load_prompt, save_prompt

    h = handle(adapter_file("ip-adapter_sd15"))
    emb = per_frame(h, 3)
    back = load_prompt(save_prompt(emb, tmp_path / "frames.safetensors"))
    assert torch.equal(back.positive, emb.positive) and torch.equal(back.negative, emb.negative)
    single = per_frame(h, 1, seed=2)
    both = combine_prompts([("embeds_1", emb, 1.0), ("embeds_2", single, 0.5)], "concat")
    assert both.positive.shape == (3, 8, 768)  # the one-frame prompt joins every frame
    assert torch.equal(both.positive[2, 4:], 0.5 * single.positive[0])
    avg = combine_prompts([("embeds_1", emb, 1.0), ("embeds_2", single, 1.0)], "average")
    assert torch.allclose(avg.positive, (emb.positive + single.positive) / 2)
    with pytest.raises(IPAdapterError, match="different lengths"):
        combine_prompts([("embeds_1", emb, 1.0), ("embeds_2", per_frame(h, 2), 1.0)], "concat")


@pytest.mark.host
@pytest.mark.parametrize("source", ["context_window", "ad_params"])
def test_a_window_call_routes_rows_to_its_frames(sd15, adapter_file, source):
    """A call covering frames [1, 3] of 4 gets images 1 and 3 (cond) and their negatives (uncond), from
    ComfyUI's ``context_window`` or from AnimateDiff-Evolved's ``ad_params["sub_idxs"]`` (the dict that
    extension puts in transformer_options; AnimateDiff-Evolved itself is not installed here)."""
    from comfy.context_windows import IndexListContextWindow
    from test_host_nodes import apply, attn2, handle

    from ipadapter_ext.ip_adapter_core.apply.run_state import RunState

    h = handle(adapter_file("ip-adapter_sd15"))
    emb = per_frame(h, 4, frames=(1, 0, "linear", [1.0, 0.5, 2.0, 0.25]))
    branch = attn2(apply(sd15, h, emb))[("input", 1, 0)].branches[0][0]
    run = RunState.for_sampling(sd15, torch.tensor([1.0, 0.0]), (4, 4, 8, 8))
    window = {"context_window": IndexListContextWindow([1, 3], dim=0, total_frames=4)} if source == "context_window" \
        else {"ad_params": {"full_length": 4, "sub_idxs": [1, 3]}}
    (index, w), = run.frame_tracks(branch, (0, 1), dict(cond_or_uncond=[0, 1], **window), 4, torch.float32, "cpu")
    assert index.tolist() == [1, 3, 5, 7]  # images 1, 3, then negatives of images 1, 3 (sets 4 + i)
    assert w.flatten().tolist() == [0.5, 0.25, 0.5, 0.25]
