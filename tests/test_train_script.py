"""scripts/train_ipadapter.py end to end on the CPU, with tiny random models of the real SD1.5 /
SDXL structures (--tiny-random) on 4 generated images:

  * a run checkpointed at step 3 and resumed from there ends bit-identical to the uninterrupted run;
  * checkpoints hold the adapter, its optimizer / scheduler / RNG state and nothing of the UNet;
  * the final file is what read_adapter detects as the trained config, loads strictly in ours and
    in diffusers' load_ip_adapter, and means the same in both;
  * docs/training.md's diffusers code, as written (its paths pointed at this module's files), loads it
    into a real StableDiffusionPipeline that generates and predicts the noise ours predicts;
  * two gloo ranks (torchrun) at batch 1 end bit-identical to each other and equal to one process
    at batch 2 (the data order and every sample's randomness depend on the stream position only);
  * one loss-log line per step with finite losses, and a progress bar.

The sd15 runs are subprocesses started together (one thread each; the SDXL smoke run is in this
process meanwhile), so the module takes about a minute on 2 cores (75 s on a busy one)."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import re
import runpy
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from support.package_alias import REPO_ROOT
from support.repo_scripts import SCRIPTS
from support.repo_scripts import script as repo_script
from support.unet_configs import sd15_config

SCRIPT = SCRIPTS / "train_ipadapter.py"
SEED, STEPS, EVERY = 7, 6, 3
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
GLOO_PROBE = """import torch, torch.distributed as d
d.init_process_group("gloo"); x = torch.ones(1); d.all_reduce(x); assert x.item() == d.get_world_size()
"""

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None,
    reason="accelerate is not installed (pip install -r requirements-train.txt)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_error(tmp) -> str | None:
    """Why two gloo ranks cannot run here (the last line of a bare all_reduce's error), or None."""
    probe = tmp / "gloo_probe.py"
    probe.write_text(GLOO_PROBE)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(_free_port()), str(probe)],
                       env=ENV, capture_output=True, text=True, timeout=300)
    lines = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()]
    return None if p.returncode == 0 else (lines[-1] if lines else f"exit status {p.returncode}")


class Run:
    """A training subprocess, its output in a log file."""

    def __init__(self, name, tmp, argv, prefix=(sys.executable,)):
        self.name, self.out, self.log = name, tmp / name, tmp / f"{name}.log"
        self.cmd = [*prefix, str(SCRIPT), "--output-dir", str(self.out), "--seed", str(SEED),
                    "--dataloader-workers", "0", *argv]
        self.t0 = time.perf_counter()
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT)
        self.seconds = None

    def wait(self):
        if self.seconds is None:
            try:
                self.proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.seconds = time.perf_counter() - self.t0
        return self

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def check(self):
        self.wait()
        assert self.proc.returncode == 0, f"{self.name} failed ({self.proc.returncode}):\n" + self.text[-4000:]
        return self

    def losses(self):
        return [json.loads(line) for line in (self.out / "loss.jsonl").read_text().splitlines()]


class InProcess:
    """scripts/train_ipadapter.py's main() in this process, one thread, accelerate's state reset after."""

    def __init__(self, out, argv):
        train_ipadapter = repo_script("train_ipadapter")
        from accelerate.state import AcceleratorState

        self.out, self.error, threads = out, None, torch.get_num_threads()
        t0 = time.perf_counter()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):  # main() seeds the global RNG
                train_ipadapter.main(argv)
        except (Exception, SystemExit) as e:  # reported by the test that uses the run
            self.error = e
        finally:
            torch.set_num_threads(threads)
            AcceleratorState._reset_state(reset_partial_state=True)
        self.seconds = time.perf_counter() - t0

    def wait(self):
        return self

    def check(self):
        if self.error is not None:
            raise AssertionError(f"in-process run failed: {self.error!r}") from self.error
        return self

    losses = Run.losses


def _save_tiny_sdxl(tmp):
    """The tiny SDXL models as a diffusers model folder and a CLIP vision folder."""
    train_data = repo_script("train_data")
    from diffusers import DDPMScheduler

    m, root = train_data.tiny_models("sdxl", 64), tmp / "sdxl-model"
    for name, part in (("unet", m["unet"]), ("vae", m["vae"]), ("text_encoder", m["text_encoders"][0]),
                       ("text_encoder_2", m["text_encoders"][1]), ("tokenizer", m["tokenizers"][0]),
                       ("tokenizer_2", m["tokenizers"][1])):
        part.save_pretrained(root / name)
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(root / "scheduler")
    m["image_encoder"].save_pretrained(tmp / "vit-h")
    return root, tmp / "vit-h"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    data = tmp / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    from PIL import Image

    for i, (w, h) in enumerate([(80, 64), (64, 96), (64, 64), (100, 72)]):  # non-square: crops, SDXL sizes
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(data / f"img{i}.png")
        (data / f"img{i}.txt").write_text(f"a photo of thing number {i}")
    (tmp / "list.jsonl").write_text("".join(json.dumps({"image": f"data/img{i}.png", "text": f"thing {i}"}) + "\n"
                                            for i in range(4)))
    sd15 = ["--tiny-random", "sd15", "--data", str(data), "--max-steps", str(STEPS)]
    r = {
        # uninterrupted, one process at batch 2 (also the reference of the distributed run)
        "full": Run("full", tmp, [*sd15, "--train-batch-size", "2", "--checkpoint-every", str(EVERY)]),
        # two gloo ranks at batch 1
        "dist": Run("dist", tmp, [*sd15, "--train-batch-size", "1", "--save-every-rank", "--save-dtype", "fp32"],
                    prefix=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()))),
    }
    # SDXL full-face from diffusers / CLIP folders (tiny models saved with save_pretrained) and a
    # JSONL list, batch 1 with 2 accumulation steps; in this process (one interpreter fewer to
    # start) while the others run
    model_dir, encoder_dir = _save_tiny_sdxl(tmp)
    r["sdxl"] = InProcess(tmp / "sdxl", [
        "--pretrained", str(model_dir), "--image-encoder", str(encoder_dir), "--variant", "full-face",
        "--data", str(tmp / "list.jsonl"), "--resolution", "64", "--max-steps", "1", "--train-batch-size", "1",
        "--gradient-accumulation-steps", "2", "--output-dir", str(tmp / "sdxl"), "--dataloader-workers", "0"])
    r["full"].check()
    r["resumed"] = Run("resumed", tmp, [*sd15, "--train-batch-size", "2", "--checkpoint-every", str(EVERY),
                                        "--resume-from", str(tmp / "full" / f"checkpoint-{EVERY}")])
    yield r
    for run in r.values():
        run.wait()
    print("\ntrain script runtimes: " + ", ".join(f"{k} {v.seconds:.1f}s" for k, v in r.items()))


@pytest.fixture(scope="module")
def script():
    train_ipadapter = repo_script("train_ipadapter")
    train_ipadapter.import_core()
    return train_ipadapter


@pytest.fixture(scope="module")
def tiny(script):
    train_data = repo_script("train_data")

    return train_data.tiny_models("sd15", 64)


@pytest.fixture(scope="module")
def initial(script, tiny):
    """The adapter the sd15 runs start from (same seed, same tiny UNet), fp32 state dict."""
    args = script.parse_args(["--tiny-random", "sd15", "--data", "x", "--output-dir", "x", "--max-steps", "1",
                              "--seed", str(SEED)])
    model = script.build_adapter(args, tiny["unet"], "sd15", tiny["image_encoder"])
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _state(path, prefix=""):
    return {k[len(prefix):]: v for k, v in load_file(str(path)).items()}


def _rel(a: dict, b: dict) -> float:
    num = sum(float((a[k].double() - b[k].double()).square().sum()) for k in b)
    return math.sqrt(num / sum(float(b[k].double().square().sum()) for k in b))


def test_tiny_unet_is_the_sd15_structure(script):
    train_data = repo_script("train_data")

    def plain(cfg):  # lists and tuples alike
        return json.loads(json.dumps({k: v for k, v in cfg.items() if k != "sample_size"}))

    assert plain(train_data.tiny_unet_config("sd15", 64)) == plain(sd15_config(10))


def test_resume_from_checkpoint_equals_uninterrupted_run(runs):
    full, resumed = runs["full"].check(), runs["resumed"].check()
    assert "resumed" in resumed.text and f"at step {EVERY}" in resumed.text
    # bitwise: the fp32 adapter and AdamW state come back exactly, the data stream continues at
    # the checkpoint's sample count, and every sample's randomness is a function of its position
    for name in ("adapter.safetensors", f"checkpoint-{STEPS}/model.safetensors"):
        a, b = _state(full.out / name), _state(resumed.out / name)
        assert a.keys() == b.keys()
        differing = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differing, f"{name}: resumed run differs in {differing[:3]}"

    def rows(run):
        return [(r["step"], r["loss"], r["lr"], r["samples"]) for r in run.losses()]

    assert rows(resumed) == rows(full)[EVERY:]


def test_checkpoint_holds_only_the_adapter_and_its_optimizer(runs, tiny):
    full = runs["full"].check()
    ckpt = full.out / f"checkpoint-{EVERY}"
    names = {p.name for p in ckpt.iterdir()}
    assert names == {"model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl", "random_states_0.pkl",
                     f"adapter-{EVERY}.safetensors", "train_state.json"}, names
    adapter = _state(ckpt / f"adapter-{EVERY}.safetensors")
    model = load_file(str(ckpt / "model.safetensors"))
    assert set(model) == {f"adapter.{k}" for k in adapter}  # the adapter-only module: no UNet key
    assert all(model[f"adapter.{k}"].shape == v.shape and model[f"adapter.{k}"].dtype == torch.float32
               for k, v in adapter.items())
    opt = torch.load(ckpt / "optimizer.bin", map_location="cpu", weights_only=True)
    assert len(opt["state"]) == len(adapter) == sum(len(g["params"]) for g in opt["param_groups"])
    shapes = sorted(tuple(v.shape) for v in adapter.values())
    assert sorted(tuple(s["exp_avg"].shape) for s in opt["state"].values()) == shapes
    unet_keys = set(tiny["unet"].state_dict())
    assert not unet_keys & {k.partition(".")[2] for k in model}
    adapter_fp32 = sum(v.numel() for v in adapter.values()) * 4
    total = sum(p.stat().st_size for p in ckpt.iterdir())
    # weights + Adam's two moments + the fp16 file: 3.5x the fp32 adapter, plus small state files
    assert total < 3.5 * adapter_fp32 + 2**20, (total, adapter_fp32)
    state = json.loads((ckpt / "train_state.json").read_text())
    assert (state["step"], state["samples"]) == (EVERY, 2 * EVERY)


def _noise_ours(path, tiny):
    """Inputs for one UNet call, and the noise this extension's attention predicts with the adapter file."""
    from ipadapter_ext.ip_adapter_core.files.adapter import load_adapter
    from ipadapter_ext.ip_adapter_core.training import diffusers_unet

    loaded = load_adapter(path, dtype=torch.float32)  # strict
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500, 500])
    text, feats = torch.randn(2, 77, 768, generator=g), torch.randn(2, 1024, generator=g)
    unet = copy.deepcopy(tiny["unet"]).eval().requires_grad_(False)
    diffusers_unet.install_processors(unet, loaded.model)
    with torch.no_grad():
        ours = diffusers_unet.predict_noise(unet, loaded.model, x, t, text, feats)
    return loaded, (x, t, text, feats), ours


def test_final_file_is_detected_and_loads_in_ours_and_diffusers(runs, tiny, initial):
    from ipadapter_ext.ip_adapter_core.files.adapter import read_adapter
    from ipadapter_ext.ip_adapter_core.training.adapter_init import new_config
    from conftest import rel_err
    from support.unet_pairs import diffusers_ip_host

    full = runs["full"].check()
    path = full.out / "adapter.safetensors"
    cfg, sd = read_adapter(path)
    assert cfg == new_config("sd15", "linear", model_channels=32)
    assert all(v.dtype == torch.float16 for v in sd.values())
    loaded, (x, t, text, feats), ours = _noise_ours(path, tiny)
    trained = _state(full.out / f"checkpoint-{STEPS}" / "model.safetensors", "adapter.")
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, trained[k].half().float()), k
    assert _rel(trained, initial) > 1e-4, "training did not move the adapter"

    unet = copy.deepcopy(tiny["unet"]).eval().requires_grad_(False)
    host = diffusers_ip_host("sd15", unet, None)
    host.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name, image_encoder_folder=None,
                         local_files_only=True)
    with torch.no_grad():
        theirs = unet(x, t, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [feats[:, None]]}).sample
    assert rel_err(theirs, ours) < 1e-4


# The paths docs/training.md's snippet names; the test points each at a file of its own.
DOC_PATHS = ("models/stable-diffusion-v1-5", "models/IP-Adapter/models/image_encoder", "runs/plus-sd15",
             "reference.png")


def test_documented_diffusers_snippet_loads_the_trained_file(runs, tiny, tmp_path):
    """The python block of docs/training.md, run as written with its paths pointed at a tiny SD1.5
    pipeline folder, the tiny encoder's folder, the trained adapter and one training image: a snippet
    that does not run (diffusers looking for an image_encoder/ folder beside the adapter) fails here."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from conftest import rel_err

    text_md = (REPO_ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text_md, re.S) if "load_ip_adapter" in b]
    assert len(blocks) == 1, "docs/training.md: expected one python block that calls load_ip_adapter"
    full = runs["full"].check()
    path = full.out / "adapter.safetensors"
    model_dir, encoder_dir = tmp_path / "sd15", tmp_path / "vit-h"
    StableDiffusionPipeline(vae=tiny["vae"], text_encoder=tiny["text_encoders"][0], tokenizer=tiny["tokenizers"][0],
                            unet=tiny["unet"], scheduler=DDPMScheduler(  # SD1.5's betas and settings
                                beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                clip_sample=False, steps_offset=1),
                            safety_checker=None, feature_extractor=None, image_encoder=None,
                            requires_safety_checker=False).save_pretrained(model_dir)
    tiny["image_encoder"].save_pretrained(encoder_dir)
    here = dict(zip(DOC_PATHS, (model_dir, encoder_dir, path.parent, full.out.parent / "data" / "img0.png")))
    code = blocks[0]
    for doc_path, ours in here.items():
        assert f'"{doc_path}"' in code, f"docs/training.md's snippet no longer names {doc_path!r}: update DOC_PATHS"
        code = code.replace(f'"{doc_path}"', repr(str(ours)))
    assert f'weight_name="{path.name}"' in code, "docs/training.md's snippet loads another file than the script writes"

    snippet = tmp_path / "training_md_snippet.py"  # run as a script, as a reader would run it
    snippet.write_text(code, encoding="utf-8")
    with torch.random.fork_rng(devices=[]):  # the pipeline draws its noise from the global generator
        scope = runpy.run_path(str(snippet))
    assert scope["image"].size == (64, 64)
    _, (x, t, text, feats), ours = _noise_ours(path, tiny)
    with torch.no_grad():
        theirs = scope["pipe"].unet(x, t, encoder_hidden_states=text,
                                    added_cond_kwargs={"image_embeds": [feats[:, None]]}).sample
    assert rel_err(theirs, ours) < 1e-4


def test_resume_adapter_loads_float32_trainable(script, runs, tiny):
    full = runs["full"].check()
    argv = ["--tiny-random", "sd15", "--data", "x", "--output-dir", "x", "--max-steps", "1",
            "--resume-adapter", str(full.out / "adapter.safetensors")]
    model = script.build_adapter(script.parse_args(argv), tiny["unet"], "sd15", tiny["image_encoder"])
    file = _state(full.out / "adapter.safetensors")
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, file[k].float()) for k, v in model.state_dict().items())
    with pytest.raises(SystemExit, match="SD1.5 base"):
        script.build_adapter(script.parse_args([*argv, "--variant", "plus"]), tiny["unet"], "sd15",
                             tiny["image_encoder"])


def test_two_gloo_ranks_equal_one_process_at_twice_the_batch(runs, initial):
    dist, full = runs["dist"].wait(), runs["full"].check()
    if dist.proc.returncode != 0:
        error = _gloo_error(dist.log.parent)
        if error:
            pytest.skip(f"gloo / torchrun cannot run here: {error}")
        dist.check()
    assert "2 process(es) on cpu" in dist.text
    r0, r1 = _state(dist.out / "adapter-rank0.safetensors"), _state(dist.out / "adapter-rank1.safetensors")
    # exact: after the all-reduce both ranks apply the same gradient to the same weights with the same ops
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "the ranks' adapters differ"
    one = _state(full.out / f"checkpoint-{STEPS}" / "model.safetensors", "adapter.")
    weights = _rel(r0, one)
    update = _rel({k: r0[k] - initial[k] for k in initial}, {k: one[k] - initial[k] for k in initial})
    print(f"\ndistributed vs one process: weights rel {weights:.2e}, updates rel {update:.2e}")
    assert weights < 1e-5
    assert update < 1e-3  # Adam's first steps are ~lr·sign(g): near-zero gradients amplify rounding
    for a, b in zip(dist.losses(), full.losses(), strict=True):
        assert a["step"] == b["step"] and a["samples"] == b["samples"]
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(b["loss"])


def test_loss_log_and_progress(runs):
    for name in ("full", "dist"):
        run = runs[name].wait()
        if run.proc.returncode != 0 and name == "dist":
            continue  # reported by the distributed test
        rows = run.check().losses()
        assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
        assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and r["lr"] == 1e-4 for r in rows)
        assert [r["samples"] for r in rows] == [2 * s for s in range(1, STEPS + 1)]
    assert f"{STEPS}/{STEPS}" in runs["full"].text  # tqdm's bar on the main process


def test_sdxl_full_face_from_model_folders_and_jsonl_with_accumulation(runs):
    from ipadapter_ext.ip_adapter_core.files.adapter import read_adapter
    from ipadapter_ext.ip_adapter_core.training.adapter_init import new_config

    run = runs["sdxl"].check()
    cfg, _ = read_adapter(run.out / "adapter.safetensors")
    assert cfg == new_config("sdxl", "mlp", model_channels=32)
    rows = run.losses()
    assert len(rows) == 1 and math.isfinite(rows[0]["loss"]) and rows[0]["samples"] == 2
