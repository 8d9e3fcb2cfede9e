"""Training inside ComfyUI (nodes/training.py, ip_adapter_core/training/comfy_train.py) on the suite's
tiny SD1.5 checkpoint (the real structure at 32 channels), loaded by ComfyUI itself: only the adapter
learns, the model and a fine-tuned input adapter are left as they were, and the host trainer's traps
are not inherited (checkpointing, inference tensors, one caption per row, Cancel)."""
import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def tiny():
    import comfy.sd

    from host_models import register_tiny_model_configs, sd15_checkpoint

    register_tiny_model_configs()
    with torch.inference_mode():  # as the checkpoint loader node runs: its weights are inference tensors
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(sd15_checkpoint(True)))[:3]
    assert next(model.model.diffusion_model.parameters()).is_inference()
    return model, clip, vae


@pytest.fixture(scope="module")
def training_set():
    """Four 64×64 "images" (8×8 latents), their captions' conds and CLIP features, made up (the
    dataset node is exercised by the training workflow test)."""
    from ipadapter_ext.ip_adapter_core.training.comfy_train import TrainingSet

    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return TrainingSet(latents=r(4, 4, 8, 8), conds=r(4, 77, 768), pooled=None, empty_cond=r(1, 77, 768),
                       empty_pooled=None, image_embeds=r(4, 1024), penultimate=r(4, 257, 1280),
                       zero_penultimate=r(1, 257, 1280), encoder="ViT-H/14", size=(64, 64))


def train_node(model, data, steps=3, variant="linear 4 tokens", ipadapter=None, checkpointing=False, lr=1e-3):
    from ipadapter_ext.nodes.training import IPATrainNode

    with torch.inference_mode():  # as ComfyUI runs every node
        return IPATrainNode.execute(model, data, variant, steps, 2, lr, 0.01, 0.05, 0.05, 0.05, 0, checkpointing,
                                    ipadapter).result


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_node_trains_only_the_adapter_and_leaves_the_model_as_it_was(tiny, training_set):
    from ipadapter_ext.ip_adapter_core.training.comfy_session import adapter_for_model

    model = tiny[0]
    dm = model.model.diffusion_model
    before, weights = snapshot(dm), [p for p in dm.parameters()]
    flags = [p.requires_grad for p in weights]
    options = repr(model.model_options)
    start = snapshot(adapter_for_model(model, training_set, "linear", seed=0))
    handle, loss, steps = train_node(model, training_set, steps=4)
    assert steps == 4 and len(loss["loss"]) == 4 and all(torch.isfinite(torch.tensor(loss["loss"])))
    after = snapshot(dm)
    assert all(torch.equal(before[k], after[k]) for k in before)            # every UNet tensor as it was
    assert all(a is b for a, b in zip(weights, dm.parameters()))            # the same tensors, put back
    assert [p.requires_grad for p in dm.parameters()] == flags
    assert repr(model.model_options) == options                            # no patch left on the model
    assert not any("forward" in vars(m) for m in dm.modules())              # no wrapper left
    trained = handle.model.state_dict()
    moved = {k for k in start if not torch.equal(start[k], trained[k].cpu())}
    assert moved == set(start), f"adapter tensors that did not move: {sorted(set(start) - moved)[:5]}"
    assert "ip_adapter.31.to_k_ip.weight" in moved                           # the middle block learns too


def test_fine_tuning_copies_the_input_adapter(tiny, training_set):
    model = tiny[0]
    first = train_node(model, training_set, steps=1)[0]
    kept = snapshot(first.model)
    second = train_node(model, training_set, steps=2, variant="fine-tune the connected adapter", ipadapter=first)[0]
    assert all(torch.equal(kept[k], v) for k, v in first.model.state_dict().items())  # input unchanged
    assert second.model is not first.model
    assert any(not torch.equal(kept[k], v.cpu()) for k, v in second.model.state_dict().items())


def _grads(model, data, checkpointing):
    from ipadapter_ext.ip_adapter_core.training import noise
    from ipadapter_ext.ip_adapter_core.training.comfy_session import adapter_for_model
    from ipadapter_ext.ip_adapter_core.training.comfy_train import (TrainSettings, checkpointed_blocks,
                                                                    train_step, trainable_weights)

    adapter = adapter_for_model(model, data, "resampler", seed=3)
    dm = model.model.diffusion_model
    settings = TrainSettings(drop_rates=(0.0, 0.0, 0.0))
    with torch.inference_mode(False), torch.enable_grad(), trainable_weights(dm), \
            checkpointed_blocks(dm, checkpointing):
        loss = train_step(model, adapter, data.normal_copy(), torch.tensor([0, 2]), torch.Generator().manual_seed(5),
                          settings, noise.alphas_cumprod())
        loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in adapter.named_parameters()}


def test_gradient_checkpointing_gives_identical_gradients(tiny, training_set):
    loss_off, off = _grads(tiny[0], training_set, False)
    loss_on, on = _grads(tiny[0], training_set, True)
    assert loss_on == loss_off
    worst = max(float((on[k] - off[k]).abs().max() / off[k].abs().max().clamp_min(1e-30)) for k in off)
    assert worst < 1e-6, f"checkpointed gradients differ by {worst:.2e} (relative)"
    assert all(off[k].abs().sum() > 0 for k in off if ".to_k_ip" in k)  # every layer's K' gets a gradient


def test_each_batch_row_gets_its_own_caption(tiny, training_set):
    from ipadapter_ext.ip_adapter_core.training.comfy_session import adapter_for_model
    from ipadapter_ext.ip_adapter_core.training.comfy_train import predict_eps

    model, d = tiny[0], training_set
    adapter = adapter_for_model(model, d, "linear", seed=0)
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100, 700])
    with torch.no_grad():
        both = predict_eps(model, adapter, x, t, d.conds[:2], d.image_embeds[:2])
        rows = [predict_eps(model, adapter, x[i:i + 1], t[i:i + 1], d.conds[i:i + 1], d.image_embeds[i:i + 1])
                for i in range(2)]
        swapped = predict_eps(model, adapter, x, t, d.conds[[1, 0]], d.image_embeds[:2])
    for i in range(2):
        assert torch.allclose(both[i], rows[i][0], rtol=1e-4, atol=1e-5), i
    assert not torch.allclose(both[0], swapped[0], rtol=1e-3, atol=1e-4)  # the caption matters per row


def test_cancel_stops_between_steps_and_leaves_the_model_unpatched(tiny, training_set):
    import comfy.model_management as mm

    from ipadapter_ext.ip_adapter_core.training.comfy_session import adapter_for_model
    from ipadapter_ext.ip_adapter_core.training.comfy_train import TrainSettings, train

    model = tiny[0]
    dm = model.model.diffusion_model
    weights = list(dm.parameters())
    flags = [p.requires_grad for p in weights]
    adapter = adapter_for_model(model, training_set, "linear")
    seen = []

    def on_step(step, loss):
        seen.append(step)
        if step == 1:
            mm.interrupt_current_processing(True)  # what the editor's Cancel does

    try:
        with pytest.raises(mm.InterruptProcessingException):
            train(model, adapter, training_set, TrainSettings(steps=10), on_step)
    finally:
        mm.interrupt_current_processing(False)
    assert seen == [0, 1]
    assert all(a is b for a, b in zip(weights, dm.parameters())) and [p.requires_grad for p in weights] == flags
    assert not any("forward" in vars(m) for m in dm.modules())


def test_saved_file_loads_and_applies(tiny, training_set, tmp_path, monkeypatch):
    import folder_paths

    from ipadapter_ext.ip_adapter_core.adapter import load_adapter, read_adapter
    from ipadapter_ext.ip_adapter_core.loader import load_adapter_handle
    from ipadapter_ext.nodes.apply import IPAApply
    from ipadapter_ext.nodes.image_prompt import IPAProject
    from ipadapter_ext.nodes.training import IPASaveAdapterNode
    from test_host_nodes import attn2, features

    handle = train_node(tiny[0], training_set, steps=1)[0]
    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))
    IPASaveAdapterNode.execute(handle, "ipadapter/mine")
    files = sorted((tmp_path / "ipadapter").glob("mine_*_.safetensors"))
    assert [f.name for f in files] == ["mine_00001_.safetensors"]
    config, _ = read_adapter(files[0])
    assert config == handle.config and config.model_channels == 32
    loaded = load_adapter(files[0])
    for k, v in handle.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v.half()), k
    h = load_adapter_handle(files[0])
    embeds = IPAProject.execute(h, features(h.config), "concat").result[0]
    patched = IPAApply.execute(tiny[0], h, embeds).result[0]
    assert len(attn2(patched)) == 16


def test_comfy_training_step_equals_the_diffusers_step(parity):
    """The node's step (ComfyUI's UNet, our training patch) against the script's (diffusers' UNet, our
    processors), on the same tiny UNet weights, adapter weights, x_t, t, captions and features: loss
    and every adapter gradient. tests/test_training_core.py checks the diffusers step against an
    independent transcription of the reference's, so this pins the node to the reference too."""
    import copy

    from unet_pairs import tiny_sd15_pair

    from conftest import rel_err
    from ipadapter_ext.ip_adapter_core.training import noise
    from ipadapter_ext.ip_adapter_core.training.adapter_init import diffusers_text_kv, new_adapter, new_config
    from ipadapter_ext.ip_adapter_core.training.comfy_train import predict_eps
    from ipadapter_ext.ip_adapter_core.training.diffusers_unet import install_processors, predict_noise

    unet, model = tiny_sd15_pair(seed=0)
    cfg = new_config("sd15", "resampler", model_channels=32)
    ours = new_adapter(cfg, diffusers_text_kv(unet), seed=1)
    theirs = copy.deepcopy(ours)
    install_processors(unet, theirs)
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([17, 803])
    cond, feats = torch.randn(2, 77, 768, generator=g), torch.randn(2, 257, 1280, generator=g)
    x_t = noise.add_noise(x0, eps, t, noise.alphas_cumprod())
    loss_c = noise.eps_loss(predict_eps(model, ours, x_t, t, cond, feats), eps)
    loss_d = noise.eps_loss(predict_noise(unet, theirs, x_t, t, cond, feats), eps)
    loss_c.backward()
    loss_d.backward()
    parity("train step node vs diffusers loss", loss_c.detach(), loss_d.detach(), 1e-5)
    named = dict(theirs.named_parameters())
    worst = max(rel_err(p.grad, named[n].grad) for n, p in ours.named_parameters())
    parity("train step node vs diffusers grads (max)", worst, None, 1e-5)


def test_bfloat16_compute_keeps_float32_adapter_weights(tiny, training_set):
    from ipadapter_ext.nodes.training import IPATrainNode

    with torch.inference_mode():
        handle, loss, _ = IPATrainNode.execute(tiny[0], training_set, "linear 4 tokens", 2, 2, 1e-3, 0.01, 0.05,
                                               0.05, 0.05, 0, False, None, "bfloat16").result
    assert all(torch.isfinite(torch.tensor(loss["loss"])))
    assert {p.dtype for p in handle.model.parameters()} == {torch.float32}
