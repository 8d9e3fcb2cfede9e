"""IP-Adapter Encode Image in chunks (encode_batch_size): the same features as one call, a
ComfyUI progress bar over the images, and Cancel (the interrupt flag) checked between chunks."""
import pytest
import torch

from conftest import assert_close_reordered

pytestmark = pytest.mark.host

# Measured on the random ViT-H (CPU, float32), 5 images (3 since issue 23: 9 ViT-H passes instead of 15, ~17 s of
# CI), batch sizes 1 and 2 against one call:
# the largest difference was ~1e-6 of the field's largest magnitude (BLAS sums in another order for
# another batch size), never bit-equal; hence the tolerance of assert_close_reordered (conftest.py).
FIELDS = ("image_embeds", "last_hidden_state", "penultimate_hidden_states")


@pytest.fixture(scope="module")
def vit_h():
    import comfy.clip_vision

    from support import host_models

    return comfy.clip_vision.load(str(host_models.clip_vision_vit_h()))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(3)
    return torch.rand(3, 64, 80, 3, generator=g)   # batch size 2 then leaves an uneven last chunk


class FakeEncoder:
    """encode_image's contract without the network: fields computed per image from its pixels."""

    image_size = 224
    image_mean = [0.48145466, 0.4578275, 0.40821073]

    def __init__(self, on_call=None):
        self.calls = []
        self.on_call = on_call

    def encode_image(self, image, crop=True):
        from comfy.clip_vision import Output

        self.calls.append(image.shape[0])
        if self.on_call is not None:
            self.on_call(len(self.calls))
        flat = image.reshape(image.shape[0], -1)
        out = Output()
        out["last_hidden_state"] = flat[:, :12].reshape(-1, 3, 4)
        out["image_embeds"] = flat[:, :4] * 2
        out["penultimate_hidden_states"] = flat[:, :12].reshape(-1, 3, 4) + 1
        out["mm_projected"] = None
        return out


@pytest.fixture
def reset_interrupt():
    import comfy.model_management as mm

    mm.interrupt_current_processing(False)
    try:
        yield mm
    finally:
        mm.interrupt_current_processing(False)


def test_batches_equal_the_single_call(vit_h, images, monkeypatch):
    from ipadapter_ext.ip_adapter_core.prompt import vision
    from ipadapter_ext.ip_adapter_core.prompt.vision import ZERO_IMAGE_ATTR, encode

    zero_calls = []
    real_zero = vision.zero_image_features
    monkeypatch.setattr(vision, "zero_image_features", lambda cv: zero_calls.append(1) or real_zero(cv))
    single = encode(vit_h, images, "center")
    assert len(zero_calls) == 1
    for batch_size in (1, 2):
        zero_calls.clear()
        out = encode(vit_h, images, "center", batch_size=batch_size)
        assert len(zero_calls) == 1, "the zero-image features are computed once, not per chunk"
        # in each run one encoder call on the one zero image: same kernels, same shape, exact
        assert torch.equal(getattr(out, ZERO_IMAGE_ATTR), getattr(single, ZERO_IMAGE_ATTR))
        for name in FIELDS:
            a, b = getattr(out, name), getattr(single, name)
            assert a.shape == b.shape and a.shape[0] == 3, (batch_size, name)
            a, b = a.float(), b.float()
            diff, scale = (a - b).abs().max().item(), b.abs().max().item()
            print(f"batch_size={batch_size} {name}: max |diff| {diff:.2e}, / max |value| {diff / scale:.2e}")
            assert_close_reordered(a, b, f"batch_size {batch_size}, {name}")
        # every field of ComfyUI's output is there (mm_projected too, None for CLIP)
        assert set(vars(single)) <= set(vars(out))
        assert (out.mm_projected is None) == (single.mm_projected is None)


def test_node_passes_encode_batch_size(monkeypatch):
    from ipadapter_ext.nodes import image_prompt

    seen = {}
    monkeypatch.setattr(image_prompt, "encode", lambda *a, **k: seen.update(k) or "features")
    assert image_prompt.IPAEncodeImage.execute(None, None, "center", encode_batch_size=16).result[0] == "features"
    assert seen["batch_size"] == 16
    image_prompt.IPAEncodeImage.execute(None, None, "center")
    assert seen["batch_size"] == 0
    schema = image_prompt.IPAEncodeImage.define_schema()
    assert schema.inputs[-1].id == "encode_batch_size" and schema.inputs[-1].optional


@pytest.mark.parametrize("batch_size, chunks", [(0, [7]), (7, [7]), (100, [7]), (1, [1] * 7), (3, [3, 3, 1])])
def test_chunks_concatenate_and_progress_adds_up(batch_size, chunks, monkeypatch, reset_interrupt):
    import comfy.utils

    from ipadapter_ext.ip_adapter_core.prompt.vision import encode_batches

    bars = []

    class Bar:
        def __init__(self, total, node_id=None):
            self.total, self.updates = total, []
            bars.append(self)

        def update(self, value):
            self.updates.append(value)

    monkeypatch.setattr(comfy.utils, "ProgressBar", Bar)
    pixels = torch.rand(7, 8, 8, 3)
    fake = FakeEncoder()
    out = encode_batches(fake, pixels, False, batch_size)
    assert fake.calls == chunks
    whole = FakeEncoder().encode_image(pixels)
    for name in FIELDS:
        assert torch.equal(getattr(out, name), getattr(whole, name))
    assert out.mm_projected is None
    if len(chunks) == 1:
        assert bars == []  # one call: nothing to show between chunks
    else:
        assert len(bars) == 1 and bars[0].total == 7
        assert bars[0].updates == chunks and sum(bars[0].updates) == 7


def test_interrupt_before_a_chunk_stops_the_encode(reset_interrupt):
    from ipadapter_ext.ip_adapter_core.prompt.vision import encode_batches

    mm = reset_interrupt
    fake = FakeEncoder()
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        encode_batches(fake, torch.rand(4, 8, 8, 3), False, 2)
    assert fake.calls == []
    # Cancel pressed while the first chunk runs: the next chunk is not started
    fake = FakeEncoder(on_call=lambda n: mm.interrupt_current_processing(True))
    with pytest.raises(mm.InterruptProcessingException):
        encode_batches(fake, torch.rand(4, 8, 8, 3), False, 1)
    assert fake.calls == [1]


def test_negative_batch_size_is_named():
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
    from ipadapter_ext.ip_adapter_core.prompt.vision import encode_batches

    with pytest.raises(IPAdapterError, match="encode_batch_size"):
        encode_batches(FakeEncoder(), torch.rand(2, 8, 8, 3), False, -1)
