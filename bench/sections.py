"""The benchmark's sections, each filling its part of the results dict."""
from __future__ import annotations

import dataclasses
import logging
import time

import torch

from . import baseline, breakdown, flops, layers, load, memory, models, step, vision
from .models import VARIANTS

log = logging.getLogger("bench")


@dataclasses.dataclass
class Plan:
    """How much of everything to run (full or --quick)."""

    latents: tuple = (32, 64)
    layer_rounds: dict = dataclasses.field(default_factory=lambda: {32: 101, 64: 41})
    breakdown_rounds: int = 15
    step_rounds: int = 9
    step64_runs: int = 3
    load_repeats: int = 5
    encode_images: int = 16
    # encode batches (issue 11): frames of a video-length batch, and the chunk size compared with
    # one call for all (the node's encode_batch_size)
    encode_frames: int = 64
    encode_batch: int = 8
    grouped: bool = True

    @classmethod
    def quick(cls):
        return cls(latents=(32,), layer_rounds={32: 9}, breakdown_rounds=5, step_rounds=1, step64_runs=0,
                   load_repeats=1, encode_images=1, encode_frames=4, encode_batch=2)


class Bench:
    def __init__(self, device: str, plan: Plan, results: dict, dtype=torch.float32):
        self.device, self.plan, self.r, self.dtype = device, plan, results, dtype
        self.model = None
        self.handles, self.prompts, self.calls = {}, {}, {}

    def timed(self, name, fn):
        t0 = time.perf_counter()
        log.info("== %s", name)
        fn()
        self.r["meta"]["section_s"][name] = time.perf_counter() - t0
        log.info("== %s done in %.1f s", name, time.perf_counter() - t0)

    # ------------------------------------------------------------------ set-up
    def setup(self):
        self.r["unet_flops"] = {lat: flops.unet_step_flops(lat) for lat in self.plan.latents}
        self.model = models.build_unet(self.device, self.dtype)
        # The capture step doubles as the warm-up step (first calls allocate and page in).
        captured = models.capture_attn2_calls(self.model, models.step_inputs(32, self.device, self.dtype))
        for lat in self.plan.latents:
            self.calls[lat] = layers.layer_calls(captured, lat, self.device, self.dtype, grouped=self.plan.grouped)
        for tokens, variant in VARIANTS.items():
            self.handles[tokens] = models.load_handle(variant)
            self.prompts[tokens] = models.make_prompt(self.handles[tokens])

    def candidates(self, tokens: int, latent: int) -> dict:
        from ipadapter_ext.ip_adapter_core.apply.image_prompt import apply_image_prompt

        from ipadapter_ext.ip_adapter_core.prompt.schedules import make_schedule

        h, p, mask = self.handles[tokens], self.prompts[tokens], models.image_mask(latent)
        ours = layers.attn2_patches(apply_image_prompt(self.model, h, p))
        ours_mask = layers.attn2_patches(apply_image_prompt(self.model, h, p, mask))
        # issue 9's controls, each on all 16 layers: composition precise routes 15 of them (the
        # image to the negative rows); the schedule looks λ up on the device per step; K+V puts λ
        # into K'/V' (cached per run, as λ is constant)
        precise = p.weighted(p.weight, weight_type="composition precise")
        sched = p.scheduled(make_schedule("linear", 0.2))
        kv = p.weighted(p.weight, scaling="K+V w/ C penalty")
        return {"ours": ours, "ours_mask": ours_mask,
                "ours_precise": layers.attn2_patches(apply_image_prompt(self.model, h, precise)),
                "ours_schedule": layers.attn2_patches(apply_image_prompt(self.model, h, sched)),
                "ours_kv": layers.attn2_patches(apply_image_prompt(self.model, h, kv)),
                "base": baseline.straightforward_patches(h, p),
                "base_mask": baseline.straightforward_patches(h, p, mask)}

    # ------------------------------------------------------------------ sections
    def layers(self):
        r = self.r
        r["layers"], r["sums"], r["branch_flops"], r["breakdown"] = {}, {}, {}, {}
        for lat in self.plan.latents:
            r["layers"][lat], r["sums"][lat], r["branch_flops"][lat] = {}, {}, {}
            for tokens in VARIANTS:
                cands = self.candidates(tokens, lat)
                rows = layers.measure(self.calls[lat], cands, tokens, lat, self.plan.layer_rounds[lat], self.device)
                r["layers"][lat][tokens] = [dataclasses.asdict(x) for x in rows]
                r["sums"][lat][tokens] = {n: layers.summed(rows, n) for n in cands}
                r["branch_flops"][lat][tokens] = {
                    "formula": flops.branch_flops_formula(self.calls[lat], tokens),
                    "counted": flops.branch_flops_counted(self.calls[lat], cands["ours"])}
                log.info("%d×%d, %d tokens: added %s ms/step", lat, lat, tokens,
                         {n: round(v * 1e3, 2) for n, v in r["sums"][lat][tokens].items()})
                if lat == 32:
                    r["breakdown"][tokens] = breakdown.breakdown(
                        self.calls[lat], cands["ours"], cands["ours_mask"], self.plan.breakdown_rounds, self.device)

    def whole_step(self):
        from ipadapter_ext.ip_adapter_core.apply.image_prompt import apply_image_prompt

        inp = models.step_inputs(32, self.device, self.dtype)
        patched = {t: apply_image_prompt(self.model, self.handles[t], self.prompts[t]) for t in VARIANTS}
        res = step.whole_steps(self.model, patched, inp, self.plan.step_rounds, self.device)
        self.r["step"] = res
        self.r["plain_step_s"] = {32: res["plain_median_s"]}
        if 64 in self.plan.latents and self.plan.step64_runs:
            from .common import median, time_call

            inp64 = models.step_inputs(64, self.device, self.dtype)
            t = [time_call(lambda: models.unet_step(self.model, inp64), self.device)
                 for _ in range(self.plan.step64_runs)]
            self.r["plain_step_s"][64] = median(t)
            self.r["step64_s"] = t

    def memory(self):
        from ipadapter_ext.ip_adapter_core.apply.image_prompt import apply_image_prompt

        variant = VARIANTS[4]
        size = models.adapter_bytes(self.handles[4])
        calls = self.calls[32]

        def prompt_for(h, seed):
            return models.make_prompt(h, seed)

        out = []
        for impl, apply in (("patch (ours)", apply_image_prompt),
                            ("straightforward", baseline.apply_straightforward)):
            res = memory.run_scenario(impl, self.model, lambda: models.load_handle(variant), prompt_for,
                                      apply, size, calls)
            out.append(dataclasses.asdict(res))
        self.r["memory"] = out
        self.r["memory_variant"] = variant

    def release_unet(self):
        """The encoder benchmark does not need the UNet: free its 3.4 GB first."""
        from .common import collect

        self.model = None
        self.handles.clear()
        self.prompts.clear()
        collect()

    def loads(self):
        self.r["load"] = load.adapter_load_times(self.plan.load_repeats)
        self.r["encoder"] = load.encoder_numbers(self.plan.encode_images)

    def encode_batches(self):
        """batch_size 0 (one encoder call) against chunks of encode_batch, each in a fresh process."""
        self.r["encode_batches"] = vision.encode_batches_numbers(
            self.plan.encode_frames, (0, self.plan.encode_batch), self.device, torch.get_num_threads())


def empty_results(meta: dict) -> dict:
    return {"meta": {**meta, "section_s": {}}}


def torch_threads(requested: int | None, device: str) -> int:
    """CPU threads for the run. Default 1 on CPU: on a shared 2-core machine every
    parallel region waits for a core another process holds; measured here, 2 threads
    were 2–8× slower and far noisier than 1. 0 keeps torch's default."""
    if requested is None:
        requested = 1 if device == "cpu" else 0
    if requested > 0:
        torch.set_num_threads(requested)
    return torch.get_num_threads()
