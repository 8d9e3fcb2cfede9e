"""Kolors in the real host: Kolors-IP-Adapter-Plus and Kolors-IP-Adapter-FaceID-Plus on a Kolors-shaped UNet made of
ComfyUI's own classes (tests/support/kolors_models.py) equal transcriptions of Kolors' published pipelines on the same
weights (the same support module): one UNet evaluation with a positive and a negative row, rel < 1e-4."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import rel_err
from support import kolors_models as km

pytestmark = pytest.mark.host

TOL = 1e-4
EFFECT = 1e-2
TEXT_WIDTH = 256   # the small model's "ChatGLM3" width (4096 in Kolors)
DIM, HEADS = 256, 4  # the small Plus file's Resampler (2048 and 12 in the release)


@pytest.fixture(scope="module")
def kolors():
    return km.comfy_kolors(text_width=TEXT_WIDTH, seed=0)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return dict(x=torch.randn(2, 4, 16, 16, generator=g), text=torch.randn(2, 8, TEXT_WIDTH, generator=g),
                y=torch.randn(2, km.KOLORS_ADM, generator=g), vit=torch.randn(1, 577, 1024, generator=g),
                zero_image=torch.randn(1, 577, 1024, generator=g), ids=torch.randn(1, 512, generator=g) * 20)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("kolors")
    plus = km.plus_state_dict(km.CHANNELS, DIM, HEADS, seed=2, dtype=torch.float32)
    face = km.faceid_state_dict(km.CHANNELS, TEXT_WIDTH, 6, seed=3, dtype=torch.float32)
    return {"plus": (km.write(d / "Kolors-IP-Adapter-Plus.safetensors", plus), plus),
            "faceid": (km.write(d / "ipa-faceid-plus.safetensors", face), face)}


def run(model, inputs, sigma=0.6):
    from support.host_unet import unet_forward

    return unet_forward(model, inputs["x"], torch.tensor([sigma] * 2), inputs["text"], [0, 1], inputs["y"])


def handle_of(path):
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle

    return load_adapter_handle(path)


def applied(model, handle, prompt):
    from ipadapter_ext.ip_adapter_core.apply.image_prompt import apply_image_prompt

    return apply_image_prompt(model, handle, prompt)


def test_kolors_plus_equals_its_pipeline(kolors, inputs, files, parity):
    import comfy.clip_vision

    from ipadapter_ext.ip_adapter_core.prompt.vision import ZERO_IMAGE_ATTR, image_prompt

    path, sd = files["plus"]
    handle = handle_of(path)
    assert (handle.config.base, handle.config.encoder) == ("kolors", "ViT-L/14-336")
    feats = comfy.clip_vision.Output()
    feats["penultimate_hidden_states"] = inputs["vit"]
    feats[ZERO_IMAGE_ATTR] = inputs["zero_image"]  # the encoder's states of a zero image: the pipeline's negative
    lam = 0.7
    ours = run(applied(kolors, handle, image_prompt(handle, feats).weighted(lam)), inputs)
    pos = km.reference_plus_tokens(sd, inputs["vit"], DIM, HEADS)
    neg = km.reference_plus_tokens(sd, inputs["zero_image"], DIM, HEADS)
    ref = run(km.reference_patched(kolors, km.section(sd, "ip_adapter"), pos, neg, lam), inputs)
    parity("kolors plus, λ 0.7", ours, ref, TOL)
    assert rel_err(ours, run(kolors, inputs)) > EFFECT


@pytest.mark.parametrize("weight_kolors", [1.0, 0.85])
def test_kolors_faceid_plus_equals_its_pipeline(kolors, inputs, files, parity, weight_kolors):
    """Raw face embedding and the crop's states -> 6 tokens in the text width (shortcut, s_scale 0.9), through the
    UNet's encoder_hid_proj (its weight and bias times weight_kolors, as the popular extension scales it) to K'/V';
    the negative projects zeros, as Kolors' pipeline does."""
    from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt
    from ipadapter_ext.ip_adapter_core.prompt.faces import project_faces

    path, sd = files["faceid"]
    handle = handle_of(path)
    cfg = handle.config
    assert (cfg.base, cfg.face, cfg.cross_dim, cfg.text_proj, cfg.num_tokens) == ("kolors", "faceid-plus", 256, 2048, 6)
    assert not cfg.normed_face and cfg.clip_encoder == "ViT-L/14-336"
    zeros = torch.zeros_like(inputs["vit"])
    pos, neg = project_faces(handle.model.image_proj, cfg, inputs["ids"], inputs["vit"], zeros, shortcut=True,
                             s_scale=0.9)
    prompt = ImagePrompt(pos, neg, cfg, handle.path, text_proj_scale=weight_kolors).weighted(0.8)
    ours = run(applied(kolors, handle, prompt), inputs)

    hid = kolors.model.diffusion_model.encoder_hid_proj
    w, b = hid.weight.detach() * weight_kolors, hid.bias.detach() * weight_kolors
    ref_pos = km.reference_faceid_tokens(sd, inputs["ids"], inputs["vit"], TEXT_WIDTH, 6, 0.9)
    ref_neg = km.reference_faceid_tokens(sd, torch.zeros_like(inputs["ids"]), zeros, TEXT_WIDTH, 6, 0.9)
    ref = run(km.reference_patched(kolors, km.section(sd, "adapter_modules"), torch.nn.functional.linear(ref_pos, w, b),
                                   torch.nn.functional.linear(ref_neg, w, b), 0.8), inputs)
    parity(f"kolors faceid plus, weight_kolors {weight_kolors}", ours, ref, TOL)
    assert rel_err(ours, run(kolors, inputs)) > EFFECT


def test_the_published_layouts_are_detected_from_their_shapes():
    from ipadapter_ext.ip_adapter_core.files.config import detect_config
    from ipadapter_ext.ip_adapter_core.files.formats import adapter_sections

    plus = detect_config(*_sections(adapter_sections, km.plus_state_dict(device="meta")))
    assert plus.name == "Kolors plus (16 tokens, ViT-L/14-336 penultimate_hidden_states)"
    assert (plus.resampler.dim, plus.resampler.heads, plus.cross_dim, len(plus.layers)) == (2048, 12, 2048, 70)
    face = detect_config(*_sections(adapter_sections, km.faceid_state_dict(device="meta")))
    assert face.name == "Kolors FaceID Plus (6 tokens per face, ArcFace face embedding + ViT-L/14-336 face crop)"
    assert (face.cross_dim, face.text_proj, face.resampler.heads, face.kv_width) == (4096, 2048, 64, 2048)


def _sections(adapter_sections, sd):
    sections, rest = adapter_sections(sd)
    return sections, "file", rest


def test_wrong_models_and_encoders_are_refused_naming_what_is_needed(kolors, inputs, files, tmp_path):
    import comfy.clip_vision

    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
    from ipadapter_ext.ip_adapter_core.files.base_model import check_model_layers
    from ipadapter_ext.ip_adapter_core.prompt.vision import check_encoder, image_prompt
    from support import host_models
    from support.host_unet import sdxl_family_model

    plus = handle_of(files["plus"][0])
    sdxl, _ = sdxl_family_model()
    with pytest.raises(IPAdapterError, match="not a Kolors UNet.*ComfyUI-Kolors-MZ.*MZ_KolorsUNETLoaderV2"):
        check_model_layers(sdxl, plus.config)
    sdxl_plus = dataclasses.replace(plus.config, base="", encoder="ViT-H/14", feature_dim=1280)
    with pytest.raises(IPAdapterError, match="is a Kolors UNet.*SDXL IP-Adapter.*Kolors-IP-Adapter-Plus"):
        check_model_layers(kolors, sdxl_plus)
    vit_h = comfy.clip_vision.Output()
    vit_h["penultimate_hidden_states"] = torch.randn(1, 257, 1280)
    with pytest.raises(IPAdapterError, match="ViT-L/14-336"):
        image_prompt(plus, vit_h)
    face = handle_of(files["faceid"][0])
    vit_h_model = comfy.clip_vision.load(str(host_models.clip_vision_vit_h()))
    with pytest.raises(IPAdapterError, match="needs the ViT-L/14-336 CLIP vision model; the one connected is ViT-H/14"):
        check_encoder(face.config, vit_h_model)
    no_proj = kolors.clone()
    no_proj.model = type("Bare", (), {"diffusion_model": object(), "model_config": kolors.model.model_config})()
    with pytest.raises(IPAdapterError, match="encoder_hid_proj"):
        check_model_layers(no_proj, face.config)


def test_face_box_crops_are_kolors_square_boxes():
    """Kolors' sample: the box squared about its centre (face_bbox_to_square), cropped with PIL (black beyond the
    picture) and resized to 336 with PIL's default filter."""
    from PIL import Image

    from ipadapter_ext.ip_adapter_core.faces.face_set import FaceSet

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1, 120, 160, 3)).astype(np.uint8)
    box = np.array([[100.3, 10.7, 170.2, 70.1]])  # wider than tall, past the right edge
    faces = FaceSet(torch.zeros(1, 512), np.zeros((1, 5, 2)), box, np.ones(1), (0,), torch.from_numpy(pixels) / 255)
    left, top, right, bottom = box[0]
    cx, cy, r = (left + right) / 2, (top + bottom) / 2, max(right - left, bottom - top) / 2
    want = Image.fromarray(pixels[0]).crop([cx - r, cy - r, cx + r, cy + r]).resize((336, 336))
    got = faces.box_crops(336)
    assert got.shape == (1, 336, 336, 3)
    assert torch.equal((got[0] * 255).round().to(torch.uint8), torch.from_numpy(np.array(want)))
