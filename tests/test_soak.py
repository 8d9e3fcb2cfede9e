"""Soak: one real ComfyUI server takes ROUNDS rounds of good and bad prompts, interleaved, and
stays correct.

The server is ``scripts/comfy_server.LocalServer`` (``main.py --cpu --listen 127.0.0.1``, isolated
input/output/temp/user folders, no custom node but this extension). Models are the suite's cached random
files: ``tests/host_models.py``'s SD1.5 checkpoint and ViT-H/14 encoder, and ``tests/adapter_files.py``'s
IP-Adapter files. Images are SIZE×SIZE pixels (an 8×8 latent), KSampler STEPS steps.

Why the full-width SD1.5 checkpoint and not the tiny one: the tiny UNet (32 channels) cannot take a real
IP-Adapter, whose K'/V' are 320/640/1280 wide; IPAApply refuses it by its layer widths
(``base_model.check_model_layers``), and no smaller file is an SD1.5 IP-Adapter. At an 8×8 latent a prompt with
the full UNet samples in a few seconds, and the file is in the suite's cache already (test_workflows uses it).

Each round queues the GOOD prompts (base adapter Encode → Project → Weight → Apply; plus adapter; two
adapters chained; an attn_mask; λ = 0; the all-in-one node), each followed by its share of the BAD prompts
(wrong encoder, SDXL adapter on SD1.5, malformed custom_blocks, a mask batch that does not fit the latent
batch, damaged / random / code-running / missing adapter files, embeds of the wrong shape, path traversal
in file inputs, absurd weights), one prompt at a time. The order of both lists rotates from round to round,
so every good prompt follows other prompts each time. After all rounds a plain prompt (no IP-Adapter node,
same checkpoint and seed) runs. Asserted:

1. the server answers ``/system_stats`` and ``/queue`` (empty queue) after every prompt;
2. every bad prompt ends in an error, a refusal by POST /prompt or an execution error in /history,
   whose text matches the BAD case's patterns: the offending input (or its file) named, and what to do.
   All of them are printed in the summary; a bad prompt that finished is reported as such;
3. every good prompt's image is bit-identical to its reference (below), and ComfyUI did not take its
   Apply nodes or its sampler from the cache (``execution_cached``): the work was really redone;
4. the final plain prompt's image is bit-identical to the plain prompt of the fresh server (no patch is
   left in the base model, which ComfyUI's cache hands to every prompt), and so is the λ = 0 image;
5. the server's resident memory after the last round is within RSS_GROWTH_MAX of that after the first;
6. while the rounds run, a second client posts the hostile converter requests of
   tests/hostile_convert_requests.py (loops, malformed graphs, a 30-deep doubling chain, JSON nested 100k deep,
   a body over the limit, ...) to ``POST /ipadapter/convert`` again and again: every one is answered, with
   its expected status, and the prompts' results above are unchanged by them.

References (economy). The literal reading, a freshly started server per distinct good prompt, costs a
server start, a checkpoint and ViT-H load and two or three ViT-H passes (5-10 s each on 2 CPU cores) per
prompt: 4-5 minutes for the 7 references, more than the soak itself. Instead the soak server, freshly
started, first runs the plain prompt and then each distinct good prompt once, before any bad prompt;
their images are the references. What this gives up against one process per reference is only state
carried from one good prompt to the next in that first pass; the rounds check that too, since their
rotating order puts each good prompt after other prompts (good and bad) than in the first pass.

ComfyUI's cache stays on (its default, as users run it). It keeps the outputs of the nodes the current
prompt shares with the previous one: every prompt starts with the same checkpoint, adapter, encoder and
image-encoding nodes, so Encode Image runs twice in all (the all-in-one node encodes on each run) and the
base model is shared by all prompts.
A node that raises is never cached, so each bad prompt runs its failing node again (the KSampler seed
also differs per bad prompt); that each one ends in an error shows the failing node ran.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support import adapter_files
import conftest
from support import hostile_convert_requests
from support.soak_prompts import (BAD, BASE, CKPT, EVIL, GOOD, IMAGES, RANDOM_BYTES, SEED, SIZE, SOURCES, TRUNCATED,
                          WRONG_EMBEDS, build, plain_prompt, schedule)
from support.adapter_files import CodeRunningPickle, adapter_sections
from support.repo_scripts import script

REPO = Path(__file__).resolve().parent.parent
comfy_server = script("comfy_server")

pytestmark = pytest.mark.host
log = logging.getLogger("ipadapter.tests.soak")

ROUNDS = int(os.environ.get("IPADAPTER_SOAK_ROUNDS", "3"))
RSS_GROWTH_MAX = 0.10


# ---------------------------------------------------------------- files the server sees


def _wrong_shape_embeds(path: Path) -> Path:
    """A well-formed .ipaembeds file of the base adapter whose tokens are 1024 wide, not 768."""
    from ipadapter_ext.ip_adapter_core.files.config import detect_config  # noqa: PLC0415
    from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt  # noqa: PLC0415
    from ipadapter_ext.ip_adapter_core.prompt.embeds_io import save_prompt  # noqa: PLC0415

    config = detect_config(adapter_sections("ip-adapter_sd15"))
    wrong = torch.randn(1, config.num_tokens, 1024, generator=torch.Generator().manual_seed(3))
    return save_prompt(ImagePrompt(wrong, wrong.clone(), config, adapter_path="x"), path)


@dataclass
class Env:
    root: Path
    config: Path
    input: Path
    marker: Path

    def server(self, name: str) -> comfy_server.LocalServer:
        work = self.root / name
        shutil.copytree(self.input, work / "input", dirs_exist_ok=True)
        # what embeds_file='../x.ipaembeds' would reach: it exists, so only the refusal keeps it out
        (work / "x.ipaembeds").write_bytes((self.input / WRONG_EMBEDS).read_bytes())
        return comfy_server.LocalServer(cpu=True, isolate=True, workdir=work, extra_model_paths=[self.config])


@pytest.fixture(scope="module")
def env(tmp_path_factory, adapter_file) -> Env:
    from support import host_models  # noqa: PLC0415 - needs the host on sys.path (conftest)

    root = tmp_path_factory.mktemp("soak")
    models = root / "models"
    for sub in ("checkpoints", "clip_vision", "ipadapter"):
        (models / sub).mkdir(parents=True)
    (models / "checkpoints" / CKPT).symlink_to(host_models.sd15_checkpoint(tiny=False))
    (models / "clip_vision" / host_models.CLIP_VISION_H_NAME).symlink_to(host_models.clip_vision_vit_h())
    adapters = models / "ipadapter"
    for variant in ("ip-adapter_sd15", "ip-adapter-plus_sd15", "ip-adapter_sd15_vit-G", "ip-adapter_sdxl_vit-h"):
        (adapters / f"{variant}.safetensors").symlink_to(adapter_file(variant))  # the session's files, not copies
    data = (adapters / BASE).read_bytes()
    (adapters / TRUNCATED).write_bytes(data[: len(data) // 2])
    (adapters / RANDOM_BYTES).write_bytes(np.random.default_rng(5).bytes(64 * 1024))
    marker = root / "pickle_code_ran"
    sections = adapter_sections("ip-adapter_sd15")
    sections["image_proj"]["payload"] = CodeRunningPickle(marker)
    torch.save(sections, adapters / EVIL)
    assert not marker.exists()
    config = root / "models.yaml"
    config.write_text("ipadapter_soak_tests:\n  base_path: " + json.dumps(str(models)) + "\n"
                      + "".join(f"  {f}: {f}\n" for f in ("checkpoints", "clip_vision", "ipadapter")))
    inp = root / "input"
    inp.mkdir()
    for key, name in IMAGES.items():
        img = Image.open(REPO / "workflows" / "input" / SOURCES[key])
        img.resize((SIZE, SIZE), Image.NEAREST if key == "mask" else Image.LANCZOS).save(inp / name)
    _wrong_shape_embeds(inp / WRONG_EMBEDS)
    adapter_files.forget_sections()  # the SDXL adapter's 0.7 GB of tensors: not needed any more
    return Env(root, config, inp, marker)


# ---------------------------------------------------------------- running prompts

@dataclass
class Outcome:
    status: str                        # 'ok' | 'refused' (POST /prompt) | 'failed' (execution error)
    text: str = ""                     # the error
    image: np.ndarray | None = None
    cached: frozenset = frozenset()    # class types of the nodes ComfyUI took from its cache


def run_prompt(server, prompt) -> Outcome:
    try:
        prompt_id = server.submit(prompt)
    except comfy_server.ComfyError as e:
        return Outcome("refused", str(e))
    try:
        entry = server.wait(prompt_id, timeout=600, poll=0.05)
    except comfy_server.ComfyError as e:
        return Outcome("failed", str(e))
    found = comfy_server.images_of(entry)
    assert len(found) == 1, found
    path = server.output_dir / found[0]["subfolder"] / found[0]["filename"]
    cached = set()
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_cached":
            cached |= {prompt[n]["class_type"] for n in data.get("nodes", [])}
    return Outcome("ok", image=np.asarray(Image.open(path).convert("RGB")), cached=frozenset(cached))


def check_answers(server) -> None:
    """Requirement 1: the server answers, its queue is empty, the process lives."""
    assert server.proc.poll() is None, f"the server exited ({server.proc.returncode}):\n{server.log_tail()}"
    stats = server.get("/system_stats", timeout=30)
    queue = server.get("/queue", timeout=30)
    assert "system" in stats, stats
    assert not queue["queue_running"] and not queue["queue_pending"], queue


def mb(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


MUST_RUN = {"IPAApply", "IPAApplySimple", "KSampler"}  # never from the cache in a good prompt of the rounds


class ConvertFlood(threading.Thread):
    """Requirement 6: posts the hostile converter requests, one after another, until stopped (at most
    MAX_PASSES passes); records (name, status or the error, seconds) for each."""

    MAX_PASSES = 20

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.requests = url, hostile_convert_requests.hostile_requests()
        self.results: list[tuple[str, object, float]] = []
        self.stop = threading.Event()

    def run(self):
        for _ in range(self.MAX_PASSES):
            for h in self.requests:
                if self.stop.is_set():
                    return
                try:
                    status, seconds = hostile_convert_requests.post(self.url, h)
                except OSError as e:  # no answer: the failure this requirement is about
                    status, seconds = f"no answer: {e!r}", float("nan")
                self.results.append((h.name, status, seconds))

    def wrong(self) -> list[str]:
        expect = {h.name: h.expect for h in self.requests}
        return [f"{name}: {status}" for name, status, _ in self.results if status not in expect[name]]


def test_soak_good_and_bad_prompts_interleaved(env):
    start = time.perf_counter()
    plan = schedule(ROUNDS)
    assert len(plan) + 1 >= 60 or ROUNDS < 3, len(plan)
    refs, mismatches, unclear, rss = {}, [], [], {}
    for bad in BAD.values():
        bad.results.clear()
    with env.server("soak") as server:
        check_answers(server)
        # the references: the fresh server's first prompts (module docstring)
        for name, prompt in [("plain", plain_prompt())] + [(n, build("good", n)) for n in GOOD]:
            t = time.perf_counter()
            got = run_prompt(server, prompt)
            check_answers(server)
            assert got.status == "ok", f"reference {name}: {got.text}\n--- server log ---\n{server.log_tail()}"
            refs[name] = got.image
            log.info("reference %-14s %.1f s", name, time.perf_counter() - t)
        t_refs = time.perf_counter() - start
        assert np.array_equal(refs["lambda_zero"], refs["plain"]), "λ = 0 differs from the unpatched model"

        flood = ConvertFlood(server.url)
        flood.start()
        for i, (r, kind, name) in enumerate(plan):
            t = time.perf_counter()
            seed = SEED if kind == "good" else SEED + 1 + i  # bad prompts: another sampler input each time
            got = run_prompt(server, build(kind, name, seed))
            check_answers(server)
            if kind == "good":
                if got.status != "ok":
                    mismatches.append(f"round {r + 1} {name}: {got.status}: {got.text}")
                elif not np.array_equal(got.image, refs[name]):
                    diff = np.abs(got.image.astype(int) - refs[name]).max()
                    mismatches.append(f"round {r + 1} {name}: image differs from the reference (max |diff| {diff})")
                elif got.cached & MUST_RUN:
                    mismatches.append(f"round {r + 1} {name}: {sorted(got.cached & MUST_RUN)} came from the cache")
            else:
                text = got.text if got.status != "ok" else "NO ERROR: the prompt finished and saved an image"
                missing = [p for p in BAD[name].expect if not re.search(p, text, re.I | re.S)]
                BAD[name].results.append((r + 1, got.status, text, missing))
                if missing:
                    unclear.append((name, r + 1, got.status, text, missing))
            log.info("%3d round %d %-4s %-55s %-8s %.1f s", i, r + 1, kind, name, got.status,
                     time.perf_counter() - t)
            if i + 1 == len(plan) or plan[i + 1][0] != r:
                rss[r] = server.rss_bytes()
                log.info("RSS after round %d: %s", r + 1, mb(rss[r]))
        flood.stop.set()
        flood.join(timeout=300)
        plain = run_prompt(server, plain_prompt())
        check_answers(server)
        rss_end = server.rss_bytes()
    total = time.perf_counter() - start
    leak = plain.status != "ok" or not np.array_equal(plain.image, refs["plain"]) or "KSampler" in plain.cached

    n_bad = sum(kind == "bad" for _, kind, _ in plan)
    n = len(plan) + 1
    growth = round(100.0 * (rss[ROUNDS - 1] - rss[0]) / rss[0], 1) + 0.0  # + 0.0: no "-0.0"
    identical = n - n_bad - len(mismatches) - int(leak)
    lines = []
    for name, bad in BAD.items():  # one line per distinct error text (usually the same in every round)
        texts: dict[tuple, list] = {}
        for r, status, text, missing in bad.results:
            texts.setdefault((status, text, tuple(missing)), []).append(str(r))
        for (status, text, missing), rounds in texts.items():
            flag = "" if not missing else f"   <-- NOT CLEAR: no match for {list(missing)}"
            lines.append(f"BAD [{name}] (round {','.join(rounds)}) {status}: {' | '.join(text.splitlines())}{flag}")
    summary = (f"SOAK prompts={n} bad={n_bad} errors_clear={n_bad - len(unclear)} identical={identical} "
               f"leaks={int(leak)} rss_growth={growth:.1f}%")
    lines.append(f"SOAK {len(refs)} reference prompts first ({t_refs:.0f} s), then {n} ({total - t_refs:.0f} s); "
                 f"RSS after round 1 {mb(rss[0])}, after round {ROUNDS} {mb(rss[ROUNDS - 1])}, "
                 f"after the plain prompt {mb(rss_end)}")
    lines.append(summary)
    slowest = max((sec for _, _, sec in flood.results), default=0.0)
    lines.append(f"SOAK convert requests={len(flood.results)} ({len(flood.requests)} kinds, during the rounds) "
                 f"answered={sum(isinstance(st, int) for _, st, _ in flood.results)} "
                 f"unexpected={len(flood.wrong())} slowest={slowest:.1f}s")
    conftest.SOAK.extend(lines)
    log.info("%s", summary)

    assert not flood.is_alive(), "the converter requests did not end"
    assert len(flood.results) >= len(flood.requests), f"only {len(flood.results)} converter requests were sent"
    assert not flood.wrong(), "converter requests not answered as expected:\n" + "\n".join(flood.wrong())
    assert not env.marker.exists(), "loading the .bin adapter ran the code in its pickle"
    assert not mismatches, "good prompts that did not reproduce their reference:\n" + "\n".join(mismatches)
    assert not leak, (f"plain prompt after the soak: {plain.status} {plain.text}; cached: {sorted(plain.cached)}; "
                      "its image must equal the fresh server's")
    assert growth <= 100 * RSS_GROWTH_MAX, \
        f"server RSS grew {growth:.1f}% from round 1 ({mb(rss[0])}) to round {ROUNDS} ({mb(rss[ROUNDS - 1])})"
    assert not unclear, "bad prompts without a clear error naming the input:\n" + "\n".join(
        f"[{name}] round {r} {status}: {text}\n    missing: {missing}" for name, r, status, text, missing in unclear)
