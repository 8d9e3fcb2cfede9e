"""FaceID benchmark (issue 21): face analysis time per picture, and what a FaceID prompt adds to a sampling step.

Face analysis. The real packs (insightface's buffalo_l) cannot be downloaded here and must not be shipped, so
the pack is made of stand-ins with the packs' inputs, outputs and compute:

- recogniser: IResNet-50 (arcface_torch's ``iresnet50``, the network of w600k_r50.onnx) with random weights,
  112×112 in, 512 out;
- detector: a convolutional network of SCRFD-10G's size at 640×640 (its multiply-adds counted by
  ``torch.utils.flop_counter`` and printed), with det_10g's nine outputs. Its outputs are the synthetic
  tables of tests/support/face_packs.py (one face per picture) plus 1e-6 × the network's heads, so the
  decoding sees one face and the whole network still runs. SCRFD's own layer layout is not reproduced;
  the time is that of a network of its compute, not of det_10g itself.

Both are exported to ONNX and run by ``FaceAnalyzer`` (onnxruntime) as a user's pack would be. The table
gives ms per picture for the whole analysis, the detector's and recogniser's sessions timed alone on inputs of
the same shapes, and our own part: the same analysis on the tests' synthetic pack (a constant table and a small
linear map), i.e. letterbox, decoding, NMS, alignment and crops.

Step. The full-size SD1.5 UNet (random weights), batch 2 as CFG runs it, 32×32 latents, λ 0.8: plain, a
4-token ip-adapter_sd15 prompt, and a FaceID prompt (ip-adapter-faceid_sd15: 4 tokens, and its rank-128 LoRA
on the 32 attention layers merged into the weights by ComfyUI when it loads the model). Whole steps in
rotating order (bench/step.py), ratios to the plain step; the LoRA merge's one-time cost is timed on its own.

Run: ``bash bench/run.sh --faceid`` (~5 min on CPU; ``--quick``: fewer rounds).
Results: ``bench/results/<date>-<device>-faceid.md``.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as a script: import as ipadapter_ext.bench, like run.py
    sys.path.insert(0, str(HERE.parent / "tests"))
    from support.package_alias import install

    install()
    __package__ = "ipadapter_ext.bench"

import torch  # noqa: E402
from torch import nn  # noqa: E402

from .common import CACHE, median, setup_imports  # noqa: E402

log = logging.getLogger("bench.faceid")
DET_SIZE = 640
PICTURES = 8
# where the packs' detector tables put the one face (in the 640 frame), as tests/test_host_faceid.py
LANDMARKS = [[300, 300], [340, 300], [320, 325], [305, 345], [335, 345]]
BOX = (280, 270, 360, 370)


# ---------------------------------------------------------------- stand-in networks

class IBlock(nn.Module):
    """arcface_torch's IBasicBlock: BN, conv3x3, BN, PReLU, conv3x3 (stride), BN, plus the shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.PReLU(cout), nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.body(x) + (x if self.down is None else self.down(x))


class IResNet50(nn.Module):
    """iresnet50: stem 3→64, stages of 3, 4, 14, 3 blocks (64, 128, 256, 512; each stride 2), BN, 25088→512, BN."""

    def __init__(self):
        super().__init__()
        layers, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)], 64
        for n, cout in zip((3, 4, 14, 3), (64, 128, 256, 512)):
            for i in range(n):
                layers.append(IBlock(cin, cout, 2 if i == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers, nn.BatchNorm2d(512))
        self.fc = nn.Linear(512 * 7 * 7, 512)
        self.out = nn.BatchNorm1d(512)

    def forward(self, x):
        return self.out(self.fc(self.features(x).flatten(1)))


def _conv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DetectorStandIn(nn.Module):
    """A backbone to strides 8/16/32 and, per stride, a head of three 3×3 convs and the score/box/landmark
    convs (2 anchors): SCRFD's outputs, of its compute. The outputs are the synthetic tables + 1e-6·heads."""

    WIDTHS = (32, 64, 128, 256, 384)  # strides 2, 4, 8, 16, 32
    HEAD = 96

    def __init__(self, tables):
        super().__init__()
        w = self.WIDTHS
        self.stem = nn.Sequential(_conv(3, w[0], 2), _conv(w[0], w[0]), _conv(w[0], w[1], 2), _conv(w[1], w[1]))
        self.stages = nn.ModuleList([nn.Sequential(_conv(w[i], w[i + 1], 2), _conv(w[i + 1], w[i + 1]),
                                                   _conv(w[i + 1], w[i + 1])) for i in (1, 2, 3)])
        self.heads = nn.ModuleList([nn.Sequential(_conv(w[i + 1], self.HEAD), _conv(self.HEAD, self.HEAD),
                                                  _conv(self.HEAD, self.HEAD)) for i in (1, 2, 3)])
        self.outs = nn.ModuleList([nn.ModuleList([nn.Conv2d(self.HEAD, 2 * c, 3, 1, 1) for c in (1, 4, 10)])
                                   for _ in range(3)])
        for i, (score, box, kps) in enumerate(tables):
            for name, t in (("score", score), ("box", box), ("kps", kps)):
                self.register_buffer(f"{name}{i}", torch.from_numpy(t).float().reshape(-1, t.shape[-1]))

    def forward(self, x):
        x = self.stem(x)
        scores, boxes, kps = [], [], []
        for i, (stage, head, outs) in enumerate(zip(self.stages, self.heads, self.outs)):
            x = stage(x)
            h = head(x)
            s, b, k = (o(h).permute(0, 2, 3, 1).reshape(-1, c) for o, c in zip(outs, (1, 4, 10)))
            scores.append(getattr(self, f"score{i}") + 1e-6 * torch.sigmoid(s))
            boxes.append(getattr(self, f"box{i}") + 1e-6 * b)
            kps.append(getattr(self, f"kps{i}") + 1e-6 * k)
        return (*scores, *boxes, *kps)


def _macs(model, shape) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(shape))
    return counter.get_total_flops() / 2  # multiply-adds, as detector papers count "FLOPs"


def build_pack(root: Path) -> dict:
    """buffalo_l as stand-ins, in ``root``/models/buffalo_l (written once); their multiply-adds."""
    from support.face_packs import STRIDES, face_at, tables

    folder = root / "models" / "buffalo_l"
    rec, det_tables = IResNet50().eval(), tables([face_at(16, 20, 20, LANDMARKS, BOX)])
    det = DetectorStandIn([det_tables[s] for s in STRIDES]).eval()
    macs = {"detector": _macs(det, (1, 3, DET_SIZE, DET_SIZE)), "recogniser": _macs(rec, (1, 3, 112, 112))}
    if not (folder / "w600k_r50.onnx").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in STRIDES]
        with torch.no_grad():
            torch.onnx.export(det, torch.zeros(1, 3, DET_SIZE, DET_SIZE), str(folder / "det_10g.onnx"),
                              input_names=["input.1"], output_names=names, opset_version=17, dynamo=False)
            torch.onnx.export(rec, torch.zeros(1, 3, 112, 112), str(folder / ".w600k_r50.onnx"),
                              input_names=["input.1"], output_names=["embedding"], opset_version=17, dynamo=False,
                              dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}})
        (folder / ".w600k_r50.onnx").replace(folder / "w600k_r50.onnx")  # last: marks the pack complete
    return macs


# ---------------------------------------------------------------- face analysis

def face_analysis(rounds: int, provider: str) -> dict:
    import numpy as np

    from support.face_packs import face_at, write_pack

    from ipadapter_ext.ip_adapter_core.faces.analysis import FaceAnalyzer

    root = CACHE / "insightface"
    macs = build_pack(root)
    pictures = torch.rand(PICTURES, 512, 512, 3, generator=torch.Generator().manual_seed(0))
    analyzer = FaceAnalyzer("buffalo_l", provider, search=[root])
    # ours alone: the same analysis over the tests' synthetic pack, whose graphs are a constant table and a
    # small factored linear map (their onnxruntime time is included: an upper bound of our own part)
    tables = CACHE / "insightface-tables"
    if not (tables / "models" / "buffalo_l" / "w600k_r50.onnx").is_file():
        write_pack(tables, faces=[face_at(16, 20, 20, LANDMARKS, BOX)], landmarks=None)
    light = FaceAnalyzer("buffalo_l", provider, search=[tables])
    total, ours = [], []
    for a, out in ((analyzer, total), (light, ours)):
        a.analyse(pictures[:1], "largest", 0)  # first run
    for _ in range(rounds):  # interleaved: a slow spell of the shared machine hits both
        for a, out in ((analyzer, total), (light, ours)):
            t0 = time.perf_counter()
            faces, _, _ = a.analyse(pictures, "largest", 0)
            out.append((time.perf_counter() - t0) / PICTURES)
            assert len(faces) == PICTURES
    # the two networks alone: the analyzer's own sessions on inputs of the same shapes
    det_in = np.zeros((1, 3, DET_SIZE, DET_SIZE), np.float32)
    rec_in = np.zeros((1, 3, 112, 112), np.float32)
    det_t, rec_t = [], []
    for _ in range(rounds * PICTURES):
        t0 = time.perf_counter()
        analyzer.detector.run(None, {analyzer.detector.get_inputs()[0].name: det_in})
        t1 = time.perf_counter()
        analyzer.recogniser.run(None, {analyzer.recogniser.get_inputs()[0].name: rec_in})
        det_t.append(t1 - t0)
        rec_t.append(time.perf_counter() - t1)
    out = {"per_picture_ms": 1e3 * median(total), "ours_ms": 1e3 * median(ours),
           "detector_ms": 1e3 * median(det_t), "recogniser_ms": 1e3 * median(rec_t), "macs": macs,
           "provider": provider, "providers": analyzer.providers}
    log.info("face analysis: %s", out)
    return out


# ---------------------------------------------------------------- step

def step_cost(rounds: int, device: str) -> dict:
    import comfy.model_management as mm

    from ipadapter_ext.ip_adapter_core.apply.image_prompt import apply_image_prompt
    from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt
    from ipadapter_ext.ip_adapter_core.prompt.faces import project_faces

    from .models import LAMBDA, build_unet, load_handle, make_prompt, step_inputs
    from .step import whole_steps

    unet = build_unet(device)
    inp = step_inputs(32, device)
    plain_handle = load_handle("ip-adapter_sd15")
    image = apply_image_prompt(unet, plain_handle, make_prompt(plain_handle))
    face_handle = load_handle("ip-adapter-faceid_sd15", "bin")  # released as .bin only
    ids = torch.nn.functional.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    pos, neg = project_faces(face_handle.model.image_proj, face_handle.config, ids)
    prompt = ImagePrompt(pos, neg, face_handle.config, face_handle.path).weighted(LAMBDA)
    face = apply_image_prompt(unet, face_handle, prompt)
    t0 = time.perf_counter()
    mm.load_models_gpu([face])  # ComfyUI merges the LoRA into the weights here, once per load
    merge_s = time.perf_counter() - t0
    # the clones share the UNet's weights: with the LoRA merged, every model below computes on the same
    # tensors (same shapes, same cost); what differs per step is only the patches' attention work
    res = whole_steps(unet, {"ip-adapter_sd15 (4 tokens)": image, "faceid_sd15 (4 tokens, LoRA merged)": face},
                      inp, rounds, device)
    mm.unload_all_models()
    res["merge_s"], res["rounds"] = merge_s, rounds
    res["lora_patches"] = len(face.patches)
    return res


# ---------------------------------------------------------------- report

def report(fa: dict, st: dict, device: str, rounds: int) -> str:
    m = fa["macs"]
    lines = ["# FaceID benchmark", "",
             f"{device.upper()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; load average at "
             f"end {os.getloadavg()[0]:.1f}. bench/faceid.py says what each row is.", "",
             f"## Face analysis ({PICTURES} pictures of 512×512, median of {rounds} rounds, provider "
             f"{fa['provider']})", "",
             "| part | ms per picture |", "|---|---|",
             f"| whole analysis (FaceAnalyzer.analyse) | {fa['per_picture_ms']:.1f} |",
             f"| detector session alone (stand-in, {m['detector'] / 1e9:.1f} G multiply-adds at 640²) | "
             f"{fa['detector_ms']:.1f} |",
             f"| recogniser session alone (IResNet-50, {m['recogniser'] / 1e9:.1f} G multiply-adds at 112²) | "
             f"{fa['recogniser_ms']:.1f} |",
             f"| ours: the same analysis on the tests' synthetic pack (letterbox, decoding, NMS, alignment, crops; "
             f"two trivial graphs) | {fa['ours_ms']:.1f} |", "",
             f"onnxruntime {_ort_version()}, providers {', '.join(fa['providers'])}, its default threads.", "",
             f"## Sampling step (full SD1.5 UNet, batch 2, 32×32 latents, λ 0.8, {st['rounds']} rounds)", "",
             f"Plain step: {1e3 * st['plain_median_s']:.0f} ms (±{100 * st['plain_spread']:.1f} %).", "",
             "| model | step ÷ plain step (median) | min | max |", "|---|---|---|---|"]
    for name, r in st["ratios"].items():
        lines.append(f"| {name} | {r['median']:.4f} | {r['min']:.4f} | {r['max']:.4f} |")
    image, face = (r["median"] for r in st["ratios"].values())
    lines += ["", f"The FaceID LoRA ({st['lora_patches']} weight patches) is merged once, when ComfyUI loads the "
              f"model: {st['merge_s']:.1f} s here. Per step, FaceID ÷ 4-token image prompt = {face / image:.4f}; "
              f"the plain step's own spread is ±{100 * st['plain_spread']:.1f} %."]
    return "\n".join(lines) + "\n"


def _ort_version() -> str:
    from ipadapter_ext.ip_adapter_core.faces.analysis import onnxruntime

    return onnxruntime().__version__


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    setup_imports(args.device)
    torch.set_num_threads(args.threads) if args.threads else None
    rounds = 3 if args.quick else 8
    fa = face_analysis(rounds, "CUDA" if args.device == "cuda" else "CPU")
    st = step_cost(3 if args.quick else 16, args.device)
    md = report(fa, st, args.device, rounds)
    quick = "-quick" if args.quick else ""
    out = HERE / "results" / f"{datetime.date.today().isoformat()}-{args.device}{quick}-faceid.md"
    out.write_text(md)
    print(md)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
