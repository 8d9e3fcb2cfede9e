"""The host-free training core (ip_adapter_core/training) on tiny random UNets of the real SD1.5
structure (diffusers ``UNet2DConditionModel(**sd15_config(10))``: 32 base channels, the same 16
attn2 layers, context 768), float32 on the CPU.

- one training step equals an independent reference written here from tencent-ailab/IP-Adapter
  (tutorial_train*.py, IPAttnProcessor2_0, ImageProjModel, Resampler): loss and every gradient;
- a new adapter is initialised as the reference does (K'/V' = text K/V, latents randn/√dim);
- the drop rule's branches and rates;
- a short run learns something image-specific while the UNet stays bit-identical.
The files a trainer writes, and diffusers loading them: tests/test_training_files.py.
"""
from __future__ import annotations

import copy
import time

import pytest
import torch

from conftest import rel_err
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
from ipadapter_ext.ip_adapter_core.training import drop, noise
from ipadapter_ext.ip_adapter_core.training.adapter_init import diffusers_text_kv, new_adapter, new_config
from ipadapter_ext.ip_adapter_core.training.diffusers_unet import install_processors, predict_noise
from support.unet_configs import sd15_config

TOL = 1e-5
MIDDLE = 31  # file index of the middle block's attn2 (the last in unet.attn_processors)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are small: a second intra-op thread saves little, and on a shared 2-core
    machine its spinning made the learning run 5x slower (measured 178 s against 35 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet():
    """The frozen tiny UNet; tests that install processors work on a deepcopy."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    model = UNet2DConditionModel(**sd15_config(10)).eval().requires_grad_(False)
    assert next(model.parameters()).dtype == torch.float32
    return model


from support.reference_train import reference_loss, reference_processors, reference_projection  # noqa: E402


def features(cfg, n, gen):
    shape = (n, cfg.feature_dim) if cfg.projection == "linear" else (n, 257, cfg.feature_dim)
    return torch.randn(shape, generator=gen)


# ------------------------------------------------------------------ 1. one step vs the reference

@pytest.mark.parametrize("projection", ["linear", "resampler"])
def test_train_step_equals_reference(unet, projection, parity):
    """Same adapter weights, x0, ε, t, text and features on both sides; the plus variant's
    Resampler is the independent RefResampler of tests/reference_train.py (not our models.resampler)."""
    cfg = new_config("sd15", projection, model_channels=32)
    ours_unet, ref_unet = copy.deepcopy(unet), copy.deepcopy(unet)
    adapter = new_adapter(cfg, diffusers_text_kv(ours_unet), seed=5)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # move K'/V' off the text K/V so a mix-up of the two would show
        for p in adapter.ip_adapter.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    install_processors(ours_unet, adapter)
    ref_ip = reference_processors(ref_unet, adapter)
    ref_proj = reference_projection(cfg, adapter)
    assert sorted(ref_ip) == sorted(l.file_index for l in cfg.layers) and MIDDLE in ref_ip

    x0 = torch.randn(2, 4, 16, 16, generator=g)
    eps = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([17, 803])
    text = torch.randn(2, 77, 768, generator=g)
    feats = features(cfg, 2, g)

    noisy = noise.add_noise(x0, eps, t, noise.alphas_cumprod())
    loss = noise.eps_loss(predict_noise(ours_unet, adapter, noisy, t, text, feats), eps)
    loss.backward()
    ref = reference_loss(ref_unet, ref_proj, x0, eps, t, text, feats)
    ref.backward()

    name = f"train step sd15 tiny {projection}"
    parity(f"{name} loss", loss.detach(), ref.detach(), TOL)
    pairs = [(p, dict(ref_proj.named_parameters())[k], k) for k, p in adapter.image_proj.named_parameters()]
    for i, proc in ref_ip.items():
        pairs += [(adapter.layer(i).to_k_ip.weight, proc.to_k_ip.weight, f"{i}.to_k_ip"),
                  (adapter.layer(i).to_v_ip.weight, proc.to_v_ip.weight, f"{i}.to_v_ip")]
    assert len(pairs) == len(list(adapter.parameters()))
    errs = {}
    for mine, theirs, key in pairs:
        assert mine.grad is not None and theirs.grad is not None, key
        assert theirs.grad.abs().sum() > 0, f"{key}: no gradient reached the reference's parameter"
        errs[key] = rel_err(mine.grad, theirs.grad)
    worst = max(errs, key=errs.get)
    assert errs[worst] < TOL, f"{name}: gradient of {worst} differs by {errs[worst]:.2e}"
    parity(f"{name} grads max", errs[worst], None, TOL)
    assert all(p.grad is None for p in ours_unet.parameters()), "a UNet parameter got a gradient"


# ------------------------------------------------------------------ 2. initialisation

def test_new_adapter_init_follows_reference(unet):
    kv = diffusers_text_kv(unet)
    assert sorted(kv) == list(range(1, 32, 2))  # 16 attn2 layers, middle block last (31)
    modules = dict(unet.named_modules())
    names = list(unet.attn_processors)
    assert names[MIDDLE].startswith("mid_block.") and names[MIDDLE].endswith("attn2.processor")
    cfg = new_config("sd15", "resampler", model_channels=32)
    rng = torch.get_rng_state()
    adapter = new_adapter(cfg, kv)
    assert torch.equal(torch.get_rng_state(), rng), "new_adapter changed the global RNG state"
    assert [l.file_index for l in cfg.layers] == sorted(kv)
    for i in sorted(kv):
        attn = modules[names[i][: -len(".processor")]]
        assert torch.equal(adapter.layer(i).to_k_ip.weight, attn.to_k.weight), i
        assert torch.equal(adapter.layer(i).to_v_ip.weight, attn.to_v.weight), i
        assert adapter.layer(i).to_k_ip.weight.data_ptr() != attn.to_k.weight.data_ptr(), "K' shares the UNet's K"
    latents = adapter.image_proj.latents
    dim = cfg.resampler.dim
    assert latents.shape == (1, cfg.num_tokens, dim)
    assert abs(latents.std().item() * dim ** 0.5 - 1) < 0.1, latents.std().item()
    assert abs(latents.mean().item()) < 5 / dim ** 0.5 / latents.numel() ** 0.5
    assert all(p.requires_grad and p.dtype == torch.float32 for p in adapter.parameters())
    again = new_adapter(cfg, kv)
    assert all(torch.equal(a, b) for a, b in zip(adapter.state_dict().values(), again.state_dict().values()))
    other = new_adapter(cfg, kv, seed=1)
    assert not torch.equal(other.image_proj.latents, latents)


def test_new_adapter_refuses_mismatched_text_kv(unet):
    cfg = new_config("sd15", "linear", model_channels=32)
    kv = diffusers_text_kv(unet)
    with pytest.raises(IPAdapterError, match="layers"):
        new_adapter(cfg, {i: w for i, w in kv.items() if i != MIDDLE})
    wide = new_config("sd15", "linear", model_channels=64)
    with pytest.raises(IPAdapterError, match="shape|needs"):
        new_adapter(wide, kv)


# ------------------------------------------------------------------ 3. the drop rule

def _reference_branch(u, i=0.05, t=0.05, ti=0.05):
    """tutorial_train.py's if/elif on rand_num, in Python floats: (drop image, drop text)."""
    if u < i:
        return True, False
    if u < i + t:
        return False, True
    if u < i + t + ti:
        return True, True
    return False, False


def test_drop_rates():
    di, dt = drop.draw(200_000, torch.Generator().manual_seed(0))
    n = di.numel()
    fractions = {"image only": (di & ~dt).sum() / n, "text only": (~di & dt).sum() / n,
                 "both": (di & dt).sum() / n, "none": (~di & ~dt).sum() / n}
    for what, want in {"image only": 0.05, "text only": 0.05, "both": 0.05, "none": 0.85}.items():
        assert abs(float(fractions[what]) - want) <= 0.002, (what, float(fractions[what]))
    di2, dt2 = drop.draw(200_000, torch.Generator().manual_seed(0))
    assert torch.equal(di, di2) and torch.equal(dt, dt2)  # from the generator alone


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_drop_branches_match_reference(dtype):
    u = torch.tensor([0.0, 0.049, 0.05, 0.099, 0.1, 0.149, 0.15, 0.99], dtype=dtype)
    di, dt = drop.drops(u)
    want = [_reference_branch(float(x)) for x in u]
    assert list(zip(di.tolist(), dt.tolist())) == want
    # what the reference itself gives for these u (0.15 < 0.05+0.05+0.05 in doubles: "both")
    if dtype == torch.float64:
        assert want == [(True, False)] * 2 + [(False, True)] * 2 + [(True, True)] * 3 + [(False, False)]
    rates = (0.1, 0.2, 0.3)
    di, dt = drop.drops(u, *rates)
    assert list(zip(di.tolist(), dt.tolist())) == [_reference_branch(float(x), *rates) for x in u]


@pytest.mark.parametrize("rates", [(-0.01, 0.05, 0.05), (0.05, -0.1, 0.05), (0.05, 0.05, -1e-9),
                                   (0.5, 0.3, 0.3), (1.0, 0.0, 0.01)])
def test_drop_refuses_bad_rates(rates):
    with pytest.raises(IPAdapterError, match="drop rates"):
        drop.drops(torch.rand(4), *rates)
    with pytest.raises(IPAdapterError, match="drop rates"):
        drop.draw(4, torch.Generator().manual_seed(0), *rates)


def test_apply_drop_replaces_masked_rows_only():
    g = torch.Generator().manual_seed(3)
    mask = torch.tensor([True, False, False, True, False])
    for values, dropped in [(torch.randn(5, 1024, generator=g), torch.zeros(1, 1024)),
                            (torch.randn(5, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g)),
                            (torch.randn(5, 257, 1280, generator=g), torch.randn(1, 257, 1280, generator=g))]:
        out = drop.apply_drop(values, dropped, mask)
        assert out.shape == values.shape and out.dtype == values.dtype
        for r in range(5):
            assert torch.equal(out[r], dropped[0] if mask[r] else values[r]), r
        assert torch.equal(drop.apply_drop(values, dropped, torch.zeros(5, dtype=torch.bool)), values)


# ------------------------------------------------------------------ 4. it learns

LEARN_STEPS = 120
LEARN_LR = 1e-4  # the reference's default; enough here (measured: eval loss ~0.82x start at 8x8)
LEARN_HW = 8     # 8x8 latents: the run's cost is the 16 layers' overhead, not the pixels


def test_short_run_learns_image_specific_noise(unet):
    t_start = time.perf_counter()
    work = copy.deepcopy(unet)
    before = {k: v.clone() for k, v in work.state_dict().items()}
    cfg = new_config("sd15", "linear", model_channels=32)
    adapter = new_adapter(cfg, diffusers_text_kv(work))
    install_processors(work, adapter)
    start_weights = {k: v.clone() for k, v in adapter.state_dict().items()}

    g = torch.Generator().manual_seed(1)
    n = 4
    x0 = torch.randn(n, 4, LEARN_HW, LEARN_HW, generator=g)
    feats = torch.randn(n, cfg.feature_dim, generator=g)
    caption = torch.randn(1, 77, 768, generator=g)
    empty = torch.randn(1, 77, 768, generator=g)
    per_image = 8
    ev_img = torch.arange(n).repeat_interleave(per_image)
    ev_t = torch.randint(0, 1000, (n * per_image,), generator=g)
    ev_eps = torch.randn(n * per_image, 4, LEARN_HW, LEARN_HW, generator=g)
    acp = noise.alphas_cumprod()
    ev_x = noise.add_noise(x0[ev_img], ev_eps, ev_t, acp)

    def evaluate():
        """(ε-MSE with each image's own features, shuffled minus matched)."""
        with torch.no_grad():
            losses = [noise.eps_loss(predict_noise(work, adapter, ev_x, ev_t, caption.expand(len(ev_t), -1, -1),
                                                   feats[(ev_img + shift) % n]), ev_eps).item()
                      for shift in (0, 1)]  # shift 1: every image gets another image's features
        return losses[0], losses[1] - losses[0]

    loss0, gain0 = evaluate()
    opt = torch.optim.AdamW(adapter.parameters(), lr=LEARN_LR, weight_decay=0.01)
    assert {id(p) for grp in opt.param_groups for p in grp["params"]} == {id(p) for p in adapter.parameters()}
    assert len(list(adapter.parameters())) == 4 + 2 * 16  # proj, norm (weight, bias); K', V' of 16 layers
    tg = torch.Generator().manual_seed(2)
    zero = torch.zeros(1, cfg.feature_dim)
    no_grad = set()
    for step in range(LEARN_STEPS):
        eps = torch.randn(x0.shape, generator=tg)
        t = noise.sample_timesteps(n, tg)
        drop_image, drop_text = drop.draw(n, tg)
        f = drop.apply_drop(feats, zero, drop_image)
        text = drop.apply_drop(caption.expand(n, -1, -1), empty, drop_text)
        loss = noise.eps_loss(predict_noise(work, adapter, noise.add_noise(x0, eps, t, acp), t, text, f), eps)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            no_grad = {k for k, p in adapter.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
        opt.step()
    loss1, gain1 = evaluate()
    elapsed = time.perf_counter() - t_start
    print(f"learning run: eval eps-MSE {loss0:.4f} -> {loss1:.4f} ({loss1 / loss0:.3f}x), image-specific gain "
          f"{gain0:.5f} -> {gain1:.5f}, {LEARN_STEPS} steps in {elapsed:.1f}s")

    assert not no_grad, f"adapter tensors without a gradient at step 1: {sorted(no_grad)[:4]}"
    assert loss1 <= 0.85 * loss0, (loss0, loss1)
    # the start gain is ~0 (random projection, K'/V' = text K/V) and may have either sign
    assert gain1 > 0 and gain1 >= 3 * abs(gain0), (gain0, gain1)
    moved = {k: not torch.equal(v, start_weights[k]) for k, v in adapter.state_dict().items()}
    assert all(moved.values()), [k for k, m in moved.items() if not m]
    assert moved[f"ip_adapter.{MIDDLE}.to_k_ip.weight"]
    after = work.state_dict()
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, f"UNet tensors changed by training: {changed[:4]}"
    assert all(p.grad is None for p in work.parameters()), "a UNet parameter got a gradient"
