"""CLIP vision side in the host: encoding with ComfyUI's own ViT-H loader (random weights,
real file format), crop modes and masks, the encoder finder, and embeds files."""
import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def vit_h():
    import comfy.clip_vision

    from support import host_models

    return comfy.clip_vision.load(str(host_models.clip_vision_vit_h()))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 96, 128, 3, generator=g)


def test_encode_gives_features_and_reference_zero_image(vit_h, images):
    from ipadapter_ext.ip_adapter_core.prompt.vision import encoder_of
    from ipadapter_ext.ip_adapter_core.prompt.vision import ZERO_IMAGE_ATTR
    from ipadapter_ext.nodes.image_prompt import IPAEncodeImage

    assert encoder_of(vit_h) == "ViT-H/14"
    out = IPAEncodeImage.execute(vit_h, images, "center").result[0]
    assert out.image_embeds.shape == (2, 1024) and out.penultimate_hidden_states.shape == (2, 257, 1280)
    zero = getattr(out, ZERO_IMAGE_ATTR)
    # the reference's negative input: the encoder on an all-zero *normalised* pixel tensor
    with torch.no_grad():
        want = vit_h.model(pixel_values=torch.zeros(1, 3, 224, 224), intermediate_output=-2)[1]
    assert torch.allclose(zero, want.float(), atol=1e-3)
    assert torch.isfinite(out.penultimate_hidden_states).all()


def test_crop_modes_and_mask_change_what_is_seen(vit_h, images):
    from ipadapter_ext.ip_adapter_core.prompt.vision import encode, prepare

    center = encode(vit_h, images, "center").image_embeds
    squash = encode(vit_h, images, "squash").image_embeds
    padded, crop_flag = prepare(vit_h, images, "pad", None)
    assert padded.shape[1:3] == (128, 128) and crop_flag is False
    assert not torch.allclose(center, squash)
    full = torch.ones(96, 128)
    assert torch.allclose(encode(vit_h, images, "center", full).image_embeds, center, atol=1e-4)
    half = full.clone()
    half[:, 64:] = 0
    assert not torch.allclose(encode(vit_h, images, "center", half).image_embeds, center, atol=1e-3)


def test_core_clip_vision_encode_output_works_with_clip_vision_input(vit_h, images, adapter_file):
    """ComfyUI's own CLIPVisionEncode output lacks the zero-image features: with the
    clip_vision input connected, IPAProject computes them and matches our encode node."""
    import nodes

    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.nodes.image_prompt import IPAEncodeImage, IPAProject

    h = load_adapter_handle(adapter_file("ip-adapter-plus_sd15"))
    with torch.inference_mode():  # as ComfyUI runs nodes
        core = nodes.CLIPVisionEncode().encode(vit_h, images, "center")[0]
    ours = IPAEncodeImage.execute(vit_h, images, "center").result[0]
    a = IPAProject.execute(h, core, "concat", None, vit_h).result[0]
    b = IPAProject.execute(h, ours, "concat").result[0]
    assert torch.allclose(a.positive, b.positive, atol=1e-4) and torch.allclose(a.negative, b.negative, atol=1e-4)
    assert a.positive.shape == (1, 32, 768)  # two images x 16 tokens


def test_clip_vision_finder_picks_by_shapes(tmp_path, adapter_file):
    import folder_paths

    from support import host_models
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.ip_adapter_core.files.model_folders import find_clip_vision_file

    folder = tmp_path / "clip_vision"
    folder.mkdir()
    (folder / "my-renamed-encoder.safetensors").symlink_to(host_models.clip_vision_vit_h())
    saved = folder_paths.folder_names_and_paths["clip_vision"]
    folder_paths.folder_names_and_paths["clip_vision"] = ([str(folder)], saved[1])
    folder_paths.filename_list_cache.clear()
    try:
        h = load_adapter_handle(adapter_file("ip-adapter_sd15"))
        assert find_clip_vision_file(h.config) == str(folder / "my-renamed-encoder.safetensors")
        bigg = load_adapter_handle(adapter_file("ip-adapter_sdxl"))
        with pytest.raises(IPAdapterError, match="no ViT-bigG/14 CLIP vision model found"):
            find_clip_vision_file(bigg.config)
    finally:
        folder_paths.folder_names_and_paths["clip_vision"] = saved
        folder_paths.filename_list_cache.clear()


def test_wrong_encoder_for_adapter_is_named(vit_h, adapter_file):
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterMismatchError
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.ip_adapter_core.prompt.vision import check_encoder

    h = load_adapter_handle(adapter_file("ip-adapter_sdxl"))
    with pytest.raises(IPAdapterMismatchError, match="needs the ViT-bigG/14 .* connected is ViT-H/14"):
        check_encoder(h.config, vit_h)


def test_embeds_roundtrip_through_safetensors(tmp_path, adapter_file):
    from ipadapter_ext.ip_adapter_core.prompt.embeds_io import load_prompt, save_prompt
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.ip_adapter_core.prompt.tokens import project
    from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt

    h = load_adapter_handle(adapter_file("ip-adapter-plus_sd15"))
    pos, neg = project(h.model.image_proj, h.config, torch.randn(1, 257, 1280),
                       zero_image_features=torch.randn(1, 257, 1280))
    p = save_prompt(ImagePrompt(pos, neg, h.config, h.path), tmp_path / "x.ipaembeds")
    back = load_prompt(p)
    assert back.config == h.config and torch.equal(back.positive, pos) and torch.equal(back.negative, neg)
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(Exception, match="x.ipaembeds"):
        load_prompt(p)
