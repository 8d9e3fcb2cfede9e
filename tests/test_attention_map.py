"""IP-Adapter Attention Map on the full-size SD1.5 UNet (random weights) in the real host: the ratio at one
layer against ‖λ·Attn(Q, K', V')‖ / ‖text attention‖ computed here; two chained image prompts masked to the
left and the right half map exactly 0 on the other half and not on their own; λ = 0 maps all zero; the
recording never reaches the connected model."""
import pytest
import torch

from test_frames import reference_kv, sdpa
from test_host_nodes import apply, attn2, handle, prompt
from test_host_runtime import conds

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def sd15():
    from support.host_unet import comfy_model

    return comfy_model("sd15")


def half(side: str) -> torch.Tensor:
    m = torch.zeros(1, 64, 64)
    m[:, :, :32] = 1.0
    return m if side == "left" else 1.0 - m


def run_map(model, latent_hw=(32, 32), weight=None):
    from ipadapter_ext.nodes.attention_map import IPAAttentionMap

    pos, neg = conds()
    latent = {"samples": torch.zeros(1, 4, *latent_hw)}
    return IPAAttentionMap.execute(model, pos, neg, latent, 3, 2, 1, 5.0, "euler", "normal").result


def test_ratio_at_one_layer(sd15, adapter_file):
    from ipadapter_ext.ip_adapter_core.apply.attention_map import Recorder
    from ipadapter_ext.ip_adapter_core.apply.transformer_options import RECORD_KEY

    h = handle(adapter_file("ip-adapter_sd15"))
    p = prompt(h, weight=0.7)
    patch = attn2(apply(sd15, h, p))[("input", 1, 0)]
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, t, 320, generator=g) for t in (256, 77, 77))
    rec = Recorder((16, 16))
    extra = dict(n_heads=5, dim_head=64, original_shape=[2, 4, 16, 16], cond_or_uncond=[1, 0], **{RECORD_KEY: rec})
    patch(q, k, v, extra)
    text = sdpa(q[1:], k[1:], v[1:], 5)  # cond_or_uncond [1, 0]: the cond (positive) rows are the second chunk
    kk, vv = reference_kv(h, patch.layer, p.positive.float())
    want = (0.7 * sdpa(q[1:], kk, vv, 5)).norm(dim=-1) / text.norm(dim=-1)
    maps, labels = rec.maps(1)
    assert labels[0].startswith("image prompt 1 (ip-adapter_sd15.safetensors): input")
    assert torch.allclose(maps[0].reshape(-1), want.reshape(-1), rtol=1e-4, atol=1e-6)
    # exact: each group's map is the sum of this one layer's ratio over a count of 1
    assert torch.equal(maps[3], maps[0]) and maps[1].abs().sum() == 0  # all = the one layer; no middle layer ran


def test_masked_prompts_map_to_their_halves_and_zero_elsewhere(sd15, adapter_file):
    from ipadapter_ext.ip_adapter_core.apply.transformer_options import RECORD_KEY

    h = handle(adapter_file("ip-adapter_sd15"))
    model = apply(apply(sd15, h, prompt(h, seed=1), mask=half("left")), h, prompt(h, weight=0.5, seed=2),
                  mask=half("right"))
    heat, over, maps, labels = run_map(model)
    assert maps.shape == (8, 256, 256) and heat.shape == over.shape == (8, 256, 256, 3)
    assert labels.splitlines()[0] == "0-0: image prompt 1 (ip-adapter_sd15.safetensors): input"
    left, right = maps[..., :128], maps[..., 128:]
    for i in range(4):  # prompt 1 (left mask): input, middle, output, all
        assert right[i].abs().max() == 0, i
        assert left[i].mean() > 0, i
    for i in range(4, 8):  # prompt 2 (right mask)
        assert left[i].abs().max() == 0, i
        assert right[i].mean() > 0, i
    assert float(maps.max()) == 1.0 and "maximum ratio" in labels
    assert RECORD_KEY not in model.model_options.get("transformer_options", {})  # the user's model is untouched


@pytest.mark.parametrize("case", ["λ = 0", "no image prompt"])
def test_lambda_zero_or_no_prompt_maps_all_zero(sd15, adapter_file, case):
    h = handle(adapter_file("ip-adapter_sd15"))
    model = apply(sd15, h, prompt(h, weight=0.0)) if case == "λ = 0" else sd15
    heat, over, maps, labels = run_map(model, latent_hw=(16, 16))
    assert maps.shape == (4, 128, 128) and maps.abs().max() == 0 and heat.abs().max() <= 0.02  # the ramp's black
    assert labels.startswith("0-0: no image prompt acted (λ = 0, or no IP-Adapter node before this one): input")
    assert "maximum ratio ‖λ·image attention‖ / ‖text attention‖: 0 " in labels


def test_a_step_outside_the_schedule_is_refused(sd15):
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
    from ipadapter_ext.nodes.attention_map import IPAAttentionMap

    pos, neg = conds()
    with pytest.raises(IPAdapterError, match=r"step: expected a step from 0 to steps - 1 = 3; got 4"):
        IPAAttentionMap.execute(sd15, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, 0, 4, 4, 5.0, "euler", "normal")
