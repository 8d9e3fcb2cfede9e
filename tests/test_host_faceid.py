"""FaceID through the nodes in the real host: a synthetic face pack (tests/support/face_packs.py) analysed by
IP-Adapter Face Analysis, projected by Project Face with ComfyUI's own CLIP vision model (FaceID Plus), weighted,
applied (the file's LoRA merged by ComfyUI's weight patching) and sampled by ComfyUI's sampler on the suite's
random full-size SD1.5 checkpoint. The maths is checked against the reference in test_host_parity.py; here the
wiring: the crop CLIP sees, the LoRA merged for sampling and taken off after, the all-in-one node."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.host

LANDMARKS = [[300, 300], [340, 300], [320, 325], [305, 345], [335, 345]]  # in the detector's 640 frame


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    from support.face_packs import face_at, write_pack

    from ipadapter_ext.ip_adapter_core.faces.analysis import FaceAnalyzer

    root = tmp_path_factory.mktemp("insightface")
    write_pack(root, faces=[face_at(16, 20, 20, LANDMARKS, (280, 270, 360, 370))])
    return FaceAnalyzer("buffalo_l", "CPU", search=[root])


@pytest.fixture(scope="module")
def sd15():
    import gc

    import comfy.model_management as mm
    import comfy.sd

    from support import host_models

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(host_models.sd15_checkpoint(tiny=False)),
                                                              output_vae=False, output_clipvision=False)
    yield model, clip
    # ComfyUI's list of loaded models keeps the sampled UNet (3.4 GB); the parity tests after this need the memory
    mm.unload_all_models()
    del model, clip
    gc.collect()


@pytest.fixture(scope="module")
def vit_h():
    import comfy.clip_vision

    from support import host_models

    return comfy.clip_vision.load(str(host_models.clip_vision_vit_h()))


def pictures(n=1, size=320):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, size, size, 3, generator=g)


def sample(model, clip, steps=1, batch=1):
    import comfy.sample

    tokens = clip.tokenize("a portrait")
    cond = [[clip.encode_from_tokens(tokens), {}]]
    uncond = [[clip.encode_from_tokens(clip.tokenize("")), {}]]
    latent = torch.zeros(batch, 4, 16, 16)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample(model, noise, steps, 2.0, "euler", "normal", cond, uncond, latent, denoise=1.0,
                               seed=0)


def test_face_analysis_node_gives_faces_crops_and_drawing(analyzer):
    from ipadapter_ext.nodes.faces import IPAFaceAnalysis

    images = pictures(2)
    faces, crops, found = IPAFaceAnalysis.execute(analyzer, images, "largest", 0).result
    assert len(faces) == 2 and faces.image_index == (0, 1)
    assert crops.shape == (2, 224, 224, 3) and found.shape == images.shape
    assert not torch.equal(found, images)  # the box and landmarks are drawn
    # letterbox: a 320 picture is scaled 2x into the 640 frame, so landmarks come back halved
    assert np.allclose(faces.landmarks[0], np.array(LANDMARKS) / 2, atol=1e-3)


def test_plus_projects_the_face_crop_as_the_reference(analyzer, vit_h, adapter_file):
    """Project Face (plusv2, auto -> v2 from the file name) equals the reference's ProjPlusModel on the face
    embedding and ComfyUI's CLIP states of the crop made the reference's way (OpenCV warpAffine, 224)."""
    import cv2

    from support.reference_faceid import RefProjPlusModel

    from ipadapter_ext.ip_adapter_core.faces.align import similarity, template
    from ipadapter_ext.ip_adapter_core.files.formats import read_flat_state_dict, split_sections
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.ip_adapter_core.prompt.vision import zero_image_features
    from ipadapter_ext.nodes.faces import IPAFaceAnalysis, IPAProjectFace

    path = adapter_file("ip-adapter-faceid-plusv2_sd15", "bin")
    images = pictures(1)
    faces = IPAFaceAnalysis.execute(analyzer, images, "largest", 0).result[0]
    prompt = IPAProjectFace.execute(load_adapter_handle(path), faces, "concat", vit_h, "auto", 1.3, 1.0).result[0]
    assert prompt.positive.shape == (1, 4, 768) and prompt.lora_strength == 1.0

    picture = (images[0].numpy() * 255).round().astype(np.uint8)
    crop = cv2.warpAffine(picture, similarity(faces.landmarks[0], template(224)), (224, 224), borderValue=0.0)
    with torch.no_grad():  # outside ComfyUI's inference_mode the graph would outlive the test (7 GB)
        states = vit_h.encode_image(torch.from_numpy(crop)[None].float() / 255, crop=True)["penultimate_hidden_states"]
    ref = RefProjPlusModel(768, 512, 1280, 4)
    ref.load_state_dict({k: v.float() for k, v in split_sections(read_flat_state_dict(path))[0]["image_proj"].items()})
    ids = faces.normed()
    with torch.no_grad():
        want = ref(ids, states.float(), shortcut=True, scale=1.3)
        want_neg = ref(torch.zeros_like(ids), zero_image_features(vit_h), shortcut=True, scale=1.3)
    rel = ((prompt.positive - want).norm() / want.norm()).item()
    assert rel < 2e-3, f"face tokens differ from the reference by {rel:.2e} (the crop is warped bilinearly both ways)"
    assert torch.allclose(prompt.negative, want_neg, rtol=1e-4, atol=1e-5)

    # negative_image (the popular extension's image_negative): its CLIP states replace the zero image's
    noise = pictures(1, 224) * 0.5
    handle = load_adapter_handle(path)
    negative = IPAProjectFace.execute(handle, faces, "concat", vit_h, "auto", 1.3, 1.0, negative_image=noise).result[0]
    with torch.no_grad():
        noise_states = vit_h.encode_image(noise, crop=True)["penultimate_hidden_states"].float()
        want_noise = ref(torch.zeros_like(ids), noise_states, shortcut=True, scale=1.3)
    assert torch.allclose(negative.negative, want_noise, rtol=1e-4, atol=1e-5)
    assert torch.equal(negative.positive, prompt.positive)


def test_faceid_samples_with_the_lora_merged_and_taken_off(analyzer, sd15, adapter_file):
    """The all-in-one node on FaceID (LoRA inside): sampling through ComfyUI changes the picture, the base model
    gets no patch (its own sampling is unchanged afterwards), and lora_strength counts."""
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.nodes.faces import IPAFaceID

    model, clip = sd15
    base = sample(model, clip)
    handle = load_adapter_handle(adapter_file("ip-adapter-faceid_sd15", "bin"))
    with_face = IPAFaceID.execute(model, handle, analyzer, pictures(1), 1.0, 0.0, 1.0).result[0]
    assert len(with_face.patches) == 4 * 32 and not model.patches, "the LoRA belongs to the clone only"
    out = sample(with_face, clip)
    assert torch.isfinite(out).all() and (out - base).abs().mean() > 1e-3
    no_lora = IPAFaceID.execute(model, handle, analyzer, pictures(1), 1.0, 0.0, 1.0, lora_strength=0.0).result[0]
    assert not no_lora.patches
    assert (sample(no_lora, clip) - out).abs().mean() > 1e-4, "lora_strength 0 gives the same picture"
    assert torch.equal(sample(model, clip), base), "sampling the base model again changed: a patch leaked"


def test_face_prompts_take_every_control_of_image_prompts(analyzer, sd15, adapter_file):
    """FaceID tokens join the image-prompt chain: weight types, precise routes, embeds scaling and λ schedules each
    change the picture sampled by ComfyUI; under a mask the attention map is exactly 0 outside it; one face per
    frame samples a frame batch; the same face chained twice at λ 0.3 equals it once at 0.6, with the LoRA
    merged once."""
    from ipadapter_ext.ip_adapter_core.apply.attention_map import record
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.nodes.apply import IPAApply
    from ipadapter_ext.nodes.faces import IPAFaceAnalysis, IPAProjectFace
    from ipadapter_ext.nodes.frames import IPAFrames
    from ipadapter_ext.nodes.weight import IPASchedule, IPAWeight

    model, clip = sd15
    handle = load_adapter_handle(adapter_file("ip-adapter-faceid_sd15", "bin"))
    faces = IPAFaceAnalysis.execute(analyzer, pictures(2), "largest", 0).result[0]
    one = IPAProjectFace.execute(handle, faces.select([0]), "concat").result[0]

    def weighted(prompt, **kw):
        args = dict(weight=0.6, blocks="all", custom_blocks="", start_at=0.0, end_at=1.0)  # λ 1: K+V = V only
        args.update(kw)
        return IPAWeight.execute(prompt, **args).result[0]

    def applied(prompt, mask=None, on=None):
        return IPAApply.execute(on or model, handle, prompt, mask).result[0]

    base = sample(applied(weighted(one)), clip)
    variants = {
        "style transfer precise": weighted(one, weight_type="style transfer precise"),
        "composition precise": weighted(one, weight_type="composition precise"),
        "ease in-out": weighted(one, weight_type="ease in-out"),
        "K+V": weighted(one, embeds_scaling="K+V"),
    }
    for name, prompt in variants.items():
        out = sample(applied(prompt), clip)
        assert torch.isfinite(out).all() and (out - base).abs().mean() > 1e-5, f"{name} changed nothing"
    # λ from 1 to 0: the first step as the constant prompt's, the second not (the schedule is per step)
    scheduled = sample(applied(IPASchedule.execute(weighted(one), "linear", 0.0, "").result[0]), clip, steps=2)
    assert (scheduled - sample(applied(weighted(one)), clip, steps=2)).abs().mean() > 1e-5, "λ schedule: no effect"

    # a mask: the face prompt acts on the left half only (attention map exactly 0 on the right)
    mask = torch.zeros(1, 128, 128)
    mask[:, :, :64] = 1.0
    masked = applied(weighted(one), mask)
    tokens = clip.tokenize("a portrait")
    positive = [[clip.encode_from_tokens(tokens), {}]]
    negative = [[clip.encode_from_tokens(clip.tokenize("")), {}]]
    maps, _, _ = record(masked, positive, negative, {"samples": torch.zeros(1, 4, 16, 16)}, 0, 2, 0, 2.0,
                        "euler", "normal")
    assert maps[..., 8:].abs().max() == 0 and maps[..., :8].abs().max() > 0

    # one face per frame: two frames, each its own face's tokens
    frames = IPAProjectFace.execute(handle, faces, "one per frame").result[0]
    framed = IPAFrames.execute(frames, 1, 0, "linear").result[0]
    out = sample(applied(weighted(framed)), clip, batch=2)
    assert out.shape[0] == 2 and torch.isfinite(out).all()

    # the same face chained twice at λ 0.3 adds up to it once at 0.6 (the branches add; the LoRA is merged once)
    two = applied(weighted(one, weight=0.3), on=applied(weighted(one, weight=0.3)))
    assert len(two.patches) == 4 * 32, "the LoRA was added twice"
    rel = float((sample(two, clip) - base).norm() / base.norm())
    assert rel < 1e-4, f"two chained face prompts differ from one at their summed λ by {rel:.2e}"
