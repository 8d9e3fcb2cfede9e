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

    from support.host_models import register_tiny_model_configs, sd15_checkpoint

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
    assert loss_on == loss_off  # the checkpointed forward runs the same kernels on the same shapes: exact
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

    from ipadapter_ext.ip_adapter_core.files.adapter import load_adapter, read_adapter
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
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

    from support.unet_pairs import tiny_sd15_pair

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


def _oom(*_):
    raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")  # what the host's allocator raises


class _Failures:
    """Where a run of IP-Adapter Train can fail, each armed with pytest's monkeypatch on the model."""

    @staticmethod
    def copying_the_weights(mp, mm, dm):
        # the swap clones the whole UNet: where an out-of-memory is likeliest; fail part-way through
        weights, seen, clone = {id(p) for p in dm.parameters()}, [], torch.Tensor.clone

        def failing_clone(t, *args, **kwargs):
            if id(t) in weights:
                seen.append(1)
                if len(seen) == 20:
                    _oom()
            return clone(t, *args, **kwargs)
        mp.setattr(torch.Tensor, "clone", failing_clone)

    @staticmethod
    def first_step_forward(mp, mm, dm):
        from ipadapter_ext.ip_adapter_core.training import comfy_train

        calls, real = [], comfy_train.TrainAttn2.__call__
        mp.setattr(comfy_train.TrainAttn2, "__call__",
                   lambda self, *a: _oom() if calls.append(1) or len(calls) == 3 else real(self, *a))

    @staticmethod
    def mid_run_backward(mp, mm, dm):
        from ipadapter_ext.ip_adapter_core.training import comfy_train

        calls, real = [], comfy_train.noise.eps_loss

        def eps_loss(pred, eps):
            calls.append(1)
            if len(calls) == 2 and pred.requires_grad:
                pred.register_hook(_oom)
            return real(pred, eps)
        mp.setattr(comfy_train.noise, "eps_loss", eps_loss)

    @staticmethod
    def cancel_before_the_first_step(mp, mm, dm):
        mm.interrupt_current_processing(True)

    @staticmethod
    def cancel_mid_run(mp, mm, dm):
        import comfy.utils

        class Bar:  # Cancel pressed while step 1 runs: the run stops before step 2
            def __init__(self, total, node_id=None):
                pass

            def update(self, value):
                mm.interrupt_current_processing(True)
        mp.setattr(comfy.utils, "ProgressBar", Bar)

    @staticmethod
    def wrapping_the_result(mp, mm, dm):
        from ipadapter_ext.nodes import training

        mp.setattr(training, "trained_handle", _oom)


def _state_of(model):
    """Everything of the model that training borrows, by identity where a copy would hide a swap."""
    dm = model.model.diffusion_model
    return {"attrs": [(m, dict(vars(m))) for m in dm.modules()],
            "tensors": [(m, dict(m._parameters), dict(m._buffers)) for m in dm.modules()],
            "values": snapshot(dm), "flags": [p.requires_grad for p in dm.parameters()],
            "modes": [m.training for m in dm.modules()], "options": repr(model.model_options),
            "object_patches": dict(model.object_patches), "patches": repr(model.patches)}


def _assert_same_state(model, before):
    after = _state_of(model)
    for (m, attrs), (_, now) in zip(before["attrs"], after["attrs"]):
        assert now.keys() == attrs.keys(), (type(m).__name__, now.keys() ^ attrs.keys())  # nothing of ours left
        assert all(now[k] is v for k, v in attrs.items()), (type(m).__name__, [k for k, v in attrs.items() if now[k] is not v])
    for (m, params, buffers), (_, p_now, b_now) in zip(before["tensors"], after["tensors"]):
        assert p_now.keys() == params.keys(), type(m).__name__
        assert [k for k in params if p_now[k] is not params[k]] == [], f"{type(m).__name__}: tensors not put back"
        assert b_now.keys() == buffers.keys(), type(m).__name__
        assert [k for k in buffers if b_now[k] is not buffers[k]] == [], f"{type(m).__name__}: buffers not put back"
    assert all(torch.equal(before["values"][k], after["values"][k]) for k in before["values"])  # bit for bit
    for key in ("flags", "modes", "options", "object_patches", "patches"):
        assert after[key] == before[key], key


@pytest.fixture
def borrowed_model(tiny):
    """The tiny model loaded, another extension's instance-level ``forward`` on a transformer block, one
    parameter trainable and one block in train mode (so putting back a default would show); undone after."""
    import comfy.ldm.modules.attention as A
    import comfy.model_management as mm

    model = tiny[0]
    dm = model.model.diffusion_model
    mm.load_models_gpu([model], force_full_load=True)  # the host's own bookkeeping on the modules, done first
    block = next(m for m in dm.modules() if isinstance(m, A.BasicTransformerBlock))
    calls = []

    def foreign(*args, **kwargs):
        calls.append(1)
        return type(block).forward(block, *args, **kwargs)

    block.forward = foreign
    odd = dm.out[-1].bias
    with torch.inference_mode():  # an inference tensor takes requires_grad only there
        odd.requires_grad_(True)
    dm.middle_block.train()
    try:
        yield model, block, foreign, calls
    finally:
        mm.interrupt_current_processing(False)
        vars(block).pop("forward", None)
        with torch.inference_mode():
            odd.requires_grad_(False)
        dm.middle_block.eval()


@pytest.mark.parametrize("checkpointing", [True, False], ids=["checkpointing", "plain"])
@pytest.mark.parametrize("failure", [n for n in vars(_Failures) if not n.startswith("_")])
def test_a_failed_run_leaves_the_model_exactly_as_it_was(borrowed_model, training_set, monkeypatch, failure,
                                                         checkpointing):
    """Out of memory or Cancel at any point: the other extension's forward is the same object, every
    UNet tensor the same object with the same bits and requires_grad, every module's mode and
    attributes as they were, and nothing of ours left on the model."""
    import comfy.model_management as mm

    model, block, foreign, calls = borrowed_model
    before = _state_of(model)
    getattr(_Failures, failure)(monkeypatch, mm, model.model.diffusion_model)
    with pytest.raises((RuntimeError, mm.InterruptProcessingException)) as raised:
        train_node(model, training_set, steps=4, checkpointing=checkpointing)
    monkeypatch.undo()
    assert "out of memory" in str(raised.value) or raised.type is mm.InterruptProcessingException
    assert vars(block).get("forward") is foreign, "the other extension's forward was not put back"
    _assert_same_state(model, before)
    if failure == "wrapping_the_result":  # a whole run went through the other extension's forward
        assert calls
