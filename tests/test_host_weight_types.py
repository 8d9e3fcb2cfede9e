"""Weight types, embeds scaling and λ schedules end to end in the real host: ComfyUI's sampler on the
full-size SD1.5 UNet (random weights) through the nodes (Project -> Weight -> Schedule -> Apply).

- every weight type changes the image against linear, and, restricted (with custom_blocks) to the
  layers where its table is 1 with the usual token sets, gives an image bit-identical to linear
  restricted the same way; restricted to the other layers it differs;
- SDXL style transfer patches exactly the 10 layers of output block 1, and each of them adds the image;
- a λ schedule: the λ every layer applies at every step (recorded at the attention call) is the
  schedule's value for that step, 0 outside start_at..end_at."""
import pytest
import torch

from test_host_nodes import apply, attn2, features, handle
from test_host_runtime import sample

pytestmark = pytest.mark.host

SB, CB = 2.0, 0.5
LATENT = (1, 4, 8, 8)


@pytest.fixture(scope="module")
def sd15():
    from support.host_unet import comfy_model

    return comfy_model("sd15")


@pytest.fixture(scope="module")
def base(adapter_file):
    from ipadapter_ext.nodes.image_prompt import IPAProject

    h = handle(adapter_file("ip-adapter_sd15"))
    return h, IPAProject.execute(h, features(h.config), "concat").result[0]


def weighted(embeds, weight_type="linear", keys=None, scaling="V only", start=0.0, end=1.0, weight=1.0):
    from ipadapter_ext.nodes.weight import IPAWeight

    custom = ", ".join(f"{b} {n}:{t} = 1" for b, n, t in sorted(keys)) if keys is not None else ""
    return IPAWeight.execute(embeds, weight, "custom" if custom else "all", custom, start, end, weight_type,
                             scaling, SB, CB).result[0]


def image(model, h, p, steps=1):
    return sample(apply(model, h, p), torch.zeros(LATENT), steps=steps)


TYPES = ["ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output", "weak middle",
         "strong middle", "style transfer", "composition", "strong style transfer", "style and composition",
         "style transfer precise", "composition precise"]


@pytest.mark.parametrize("weight_type", TYPES)
def test_weight_type_differs_from_linear_except_where_it_is_one(sd15, base, weight_type):
    from ipadapter_ext.ip_adapter_core.prompt.blocks import DEFAULT_ROUTE, layer_table

    h, embeds = base
    table = layer_table("sd15", weight_type, SB, CB)
    ones = {k for k, (m, r) in table.items() if m == 1.0 and r == DEFAULT_ROUTE}
    others = set(table) - ones
    linear = image(sd15, h, weighted(embeds))
    assert not torch.equal(image(sd15, h, weighted(embeds, weight_type)), linear)
    if ones:  # exact: the same layers with the same λ of 1, so the same kernels on the same shapes
        assert torch.equal(image(sd15, h, weighted(embeds, weight_type, ones)),
                           image(sd15, h, weighted(embeds, "linear", ones)))
    touched = {k for k in others if table[k][0] != 0.0}
    if touched:
        assert not torch.equal(image(sd15, h, weighted(embeds, weight_type, touched)),
                               image(sd15, h, weighted(embeds, "linear", touched)))


def test_linear_is_the_weighting_of_before(sd15, base):
    """linear / V only with every default is the node of before the weight types (same patches)."""
    from ipadapter_ext.nodes.weight import IPAWeight

    h, embeds = base
    old = IPAWeight.execute(embeds, 0.8, "all", "", 0.0, 1.0).result[0]
    assert old.layer_weights is None and old.layer_routes is None and old.scaling == "V only"
    # exact: the same patches with the same values, so the same kernels on the same shapes
    assert torch.equal(image(sd15, h, old), image(sd15, h, weighted(embeds, "linear", weight=0.8)))


def test_sdxl_style_transfer_patches_only_output_block_1(adapter_file):
    from support.host_unet import sdxl_family_model

    from ipadapter_ext.ip_adapter_core.files.layers import layers_for
    from ipadapter_ext.nodes.image_prompt import IPAProject

    h = handle(adapter_file("ip-adapter_sdxl_vit-h"))
    embeds = IPAProject.execute(h, features(h.config), "concat").result[0]
    model = apply(sdxl_family_model()[0], h, weighted(embeds, "style transfer"))
    patched = attn2(model)
    assert sorted(patched) == [("output", 1, t) for t in range(10)]
    g = torch.Generator().manual_seed(0)
    for key, patch in patched.items():
        layer = next(l for l in layers_for("sdxl") if l.key == key)
        q = torch.randn(2, 64, layer.hidden, generator=g)
        k, v = (torch.randn(2, 77, layer.hidden, generator=g) for _ in range(2))
        extra = {"n_heads": layer.heads, "cond_or_uncond": [1, 0], "original_shape": [1, 4, 8, 8]}
        from ipadapter_ext.ip_adapter_core.apply.unet_patch import Attn2Patch

        with torch.no_grad():
            assert not torch.equal(patch(q, k, v, extra), Attn2Patch(layer, ())(q, k, v, extra)), key


# ---------------------------------------------------------------- λ over sampling time

class LambdaRecorder:
    """Records, at every image-attention call, the λ the call applies: scale × the per-step factor."""

    def __init__(self, monkeypatch):
        from ipadapter_ext.ip_adapter_core.apply import unet_patch as patch_mod

        self.seen = []  # (layer key, sigma, λ)
        real_call = patch_mod.Attn2Patch._add_branch
        recorder = self

        def add_branch(patch, out, q, extra, run, branch, plan, scale, roles, attention, kw):
            gate, lam = run.step_factors(branch, plan, extra.get("sigmas"), q.dtype)
            value = scale * (1.0 if lam is None else float(lam)) * (1.0 if gate is None else float(gate))
            recorder.seen.append((patch.layer.key, float(extra["sigmas"].max()), value))
            return real_call(patch, out, q, extra, run, branch, plan, scale, roles, attention, kw)

        monkeypatch.setattr(patch_mod.Attn2Patch, "_add_branch", add_branch)


@pytest.mark.parametrize("curve,keyframes,start,end", [
    ("linear", "", 0.0, 1.0),
    ("ease in", "", 0.2, 0.8),
    ("keyframes", "0.0:1.0, 0.5:0.6, 1.0:0.2", 0.0, 1.0),
])
def test_schedule_lambda_per_layer_and_step(sd15, base, monkeypatch, curve, keyframes, start, end):
    import comfy.samplers

    from ipadapter_ext.nodes.weight import IPASchedule

    h, embeds = base
    p = weighted(embeds, "weak input", start=start, end=end, weight=1.0)
    p = IPASchedule.execute(p, curve, 0.2, keyframes).result[0]
    steps = 6
    rec = LambdaRecorder(monkeypatch)
    sample(apply(sd15, h, p), torch.zeros(LATENT), steps=steps)

    # the expectation, from the sampler's own schedule and the range as ComfyUI resolves percents
    ms = sd15.get_model_object("model_sampling")
    sigmas = [float(s) for s in comfy.samplers.calculate_sigmas(ms, "normal", steps)]
    hi, lo = float(ms.percent_to_sigma(start)), float(ms.percent_to_sigma(end))
    inside = [i for i in range(steps) if lo <= sigmas[i] <= hi]
    assert 2 <= len(inside) < steps or (start, end) == (0.0, 1.0)

    def expected_lambda(i):
        if i not in inside:
            return 0.0
        u = (i - inside[0]) / (inside[-1] - inside[0])
        if curve == "linear":
            return 1.0 + (0.2 - 1.0) * u
        if curve == "ease in":
            return 1.0 + (0.2 - 1.0) * u * u
        return 1.0 - 0.8 * u if u <= 0.5 else 0.6 - 0.8 * (u - 0.5)  # the keyframes' two segments

    assert len(rec.seen) == 16 * steps  # every layer, every step (euler: one evaluation per step)
    for key, sigma, lam in rec.seen:
        i = min(range(steps), key=lambda j: abs(sigmas[j] - sigma))
        layer_mult = 0.2 if key[0] == "input" else 1.0
        assert lam == pytest.approx(expected_lambda(i) * layer_mult, rel=1e-6, abs=1e-7), (key, i)
