"""The state of one sampling run: everything the attn2 patch needs that depends on the run.

    node time (immutable, shared by clones)  ->  run time (this module)              ->  call time (every layer)
    Branch: adapter, prompt, mask, range %       sigma range on this run's schedule,       Attn2Patch.__call__ looks
    Attn2Patch: layer, branches                  K'/V' per device, row index per layout,   up; builds nothing from
                                                 masks per call shape, cond roles           Python data, reads no
                                                                                            device tensor on the host
A RunState is made when a sampler starts (the OUTER_SAMPLE wrapper that ``run_wrapper.register``
installs once per model), travels to the patches inside ``transformer_options`` and is
emptied when the run ends, so no K'/V' or mask copy outlives it on any device. Input errors
that depend on the run (a mask batch that fits no latent batch) are raised there, before
the first step, instead of deep inside the UNet.

A UNet called outside a ComfyUI sampler (another extension's own loop, the tests' direct
calls) gets a RunState per call from ``RunState.ad_hoc``: correct, but nothing is reused.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..prompt.blocks import V_ONLY, ZERO_SET
from ..prompt.frames import plan_frames, row_tracks
from .attention import NEGATIVE, POSITIVE, per_head_kv, scale_kv
from .masks import call_window, check_mask_batch, chunk_frames, crop_to_area, mask_rows, resize_to_tokens

log = logging.getLogger("ipadapter")

ALWAYS, NEVER, GATED = "always", "never", "gated"
WHOLE_SCHEDULE = 1e8  # percent_to_sigma(0) is 999999999.9: a range starting there has no upper bound


@dataclass(frozen=True)
class Plan:
    """How one branch runs in this run: its sigma range and whether it needs a per-step gate."""

    sigma_start: float
    sigma_end: float
    mode: str  # ALWAYS | NEVER | GATED


def plan_range(sigma_start: float, sigma_end: float, schedule: list[float] | None) -> Plan:
    """ALWAYS when every sigma the sampler will use lies in [end, start] (intermediate sigmas of
    multi-stage samplers lie between schedule points, so they are inside too), else GATED."""
    if sigma_end > sigma_start:
        return Plan(sigma_start, sigma_end, NEVER)
    if sigma_start >= WHOLE_SCHEDULE and sigma_end <= 0.0:
        return Plan(sigma_start, sigma_end, ALWAYS)
    if schedule and all(sigma_end <= s <= sigma_start for s in schedule):
        return Plan(sigma_start, sigma_end, ALWAYS)
    return Plan(sigma_start, sigma_end, GATED)


class RunState:
    """Per-run resolutions and caches; see the module docstring."""

    def __init__(self, model_sampling=None, schedule: list[float] | None = None,
                 latent_shape: tuple[int, ...] | None = None, conds: dict | None = None):
        self.model_sampling = model_sampling
        self.schedule = schedule
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else None
        # frames of the latent batch; None outside a sampler, where a call's shape includes its
        # cond/uncond chunks: each chunk is then taken as the whole batch
        self.frames = self.latent_shape[0] if self.latent_shape else None
        # the guider's conds (name -> list) or a callable returning them, read at the first call
        self._conds = conds
        self._chunk_info = None          # uuid -> (role, area)
        self._plans: dict = {}
        self._kv: dict = {}
        self._rows: dict = {}
        self._masks: dict = {}
        self._gates: dict = {}
        self._lams: dict = {}
        self._lam_tables: dict = {}
        self._frame_plans: dict = {}
        self._tracks: dict = {}

    # ------------------------------------------------------------ construction

    @classmethod
    def ad_hoc(cls, extra_options) -> "RunState":
        shape = extra_options.get("original_shape")
        run = cls(latent_shape=tuple(shape) if shape is not None else None)
        run.frames = None
        return run

    @classmethod
    def for_sampling(cls, model_patcher, sigmas: torch.Tensor, latent_shape, conds=None) -> "RunState":
        """What a sampler run resolves once: the schedule (one host copy of the sigmas, here and
        not per layer) and the model_sampling in force now, after every patch applied to it."""
        schedule = [float(s) for s in sigmas.detach().to("cpu", torch.float64).flatten()]
        return cls(model_patcher.get_model_object("model_sampling"), schedule, tuple(latent_shape), conds)

    def prepare(self, branches) -> "RunState":
        """At the start of a run: refuse what would fail or be wrong mid-sampling, and resolve
        every branch's sigma range on this run's schedule."""
        for branch in branches:
            if branch.mask is not None and self.latent_shape is not None:
                check_mask_batch(branch.mask, self.latent_shape[0])
            self.plan(branch)
            if branch.prompt.animated() and self.frames:
                self.frame_plan(branch)  # its warnings (images without frames, short lists) before step 1
        return self

    def free(self) -> None:
        """Drop every cached tensor (the run is over)."""
        for d in (self._plans, self._kv, self._rows, self._masks, self._gates, self._lams, self._lam_tables,
                  self._frame_plans, self._tracks):
            d.clear()
        self._conds = self._chunk_info = None

    def cached_tensors(self) -> list[torch.Tensor]:
        """Every tensor this run holds (for tests and memory accounting)."""
        out = [t for held in self._kv.values() for t in held if t is not None]
        out += list(self._rows.values()) + list(self._masks.values()) + [g for _, g in self._gates.values()]
        out += [t for _, t in self._lams.values()] + [t for held in self._lam_tables.values() for t in held]
        out += [t for tracks in self._tracks.values() for track in tracks for t in track if t is not None]
        return out

    # ------------------------------------------------------------ per branch

    def plan(self, branch) -> Plan:
        plan = self._plans.get(branch)
        if plan is None:
            if self.model_sampling is not None:
                start = float(self.model_sampling.percent_to_sigma(branch.prompt.start_at))
                end = float(self.model_sampling.percent_to_sigma(branch.prompt.end_at))
            else:  # no sampler: the range as resolved when the node ran
                start, end = branch.fallback_range
            plan = self._plans[branch] = plan_range(start, end, self.schedule if self.model_sampling else None)
        return plan

    def kv(self, branch, layer, device, dtype, scaling=V_ONLY, w=None):
        """K'/V' of the branch's token sets [image; negative; zeros] for one layer; for the modes
        with λ inside the attention, scaled by ``w`` (cached when it is a number, made per call
        when it is a step's λ on the device)."""
        key = (branch, layer.file_index, device, dtype)
        hit = self._kv.get(key)
        if hit is None:
            hit = self._kv[key] = branch.image_kv(layer, device, dtype)
        if scaling == V_ONLY:
            return hit
        if isinstance(w, torch.Tensor):
            return scale_kv(*hit, scaling, w)
        skey = key + (scaling, w)
        scaled = self._kv.get(skey)
        if scaled is None:
            scaled = self._kv[skey] = scale_kv(*hit, scaling, w)
        return scaled

    def head_kv(self, branch, layer, device, dtype, heads: int, scaling=V_ONLY, w=None):
        """K'/V' laid out per head for the few-key path (attention.add_few_key_branch)."""
        if isinstance(w, torch.Tensor):
            return per_head_kv(*self.kv(branch, layer, device, dtype, scaling, w), heads)
        key = (branch, layer.file_index, device, dtype, heads, scaling, w)
        hit = self._kv.get(key)
        if hit is None:
            hit = self._kv[key] = per_head_kv(*self.kv(branch, layer, device, dtype, scaling, w), heads)
        return hit

    def step_factors(self, branch, plan: Plan, sigmas, dtype):
        """(range gate, λ of the step) as [1, 1, 1] device tensors, each None when it is constant
        over the run (no gate needed; λ not scheduled)."""
        gate = lam = None
        if sigmas is not None and plan.mode != ALWAYS:
            gate = self.gate(branch, plan, sigmas, dtype)
        if branch.prompt.time_varying():
            lam = self.step_lambda(branch, sigmas, dtype)
        return gate, lam

    def gate(self, branch, plan: Plan, sigmas: torch.Tensor, dtype):
        """1 where the step's sigma is in the branch's range, else 0, as a device tensor: the
        decision stays on the device (no sync); computed once per model evaluation."""
        last = self._gates.get((branch, dtype))
        if last is not None and last[0] is sigmas:
            return last[1]
        s = sigmas.detach().amax()
        g = ((s <= plan.sigma_start) & (s >= plan.sigma_end)).to(dtype).reshape(1, 1, 1)
        self._gates[(branch, dtype)] = (sigmas, g)
        return g

    def step_lambda(self, branch, sigmas, dtype):
        """λ of the sampling step being evaluated, looked up on the device (no sync): the table
        holds λ per step, indexed by the step whose start sigma is the smallest at or above the
        call's sigma, so a multi-stage sampler's intermediate evaluations get their step's λ.
        Computed once per model evaluation."""
        last = self._lams.get((branch, dtype))
        if last is not None and last[0] is sigmas:
            return last[1]
        device = sigmas.device if sigmas is not None else torch.device("cpu")
        tkey = (branch, device)
        table = self._lam_tables.get(tkey)
        if table is None:
            table = self._lam_tables[tkey] = self._lambda_table(branch, device)
        step_sigmas, values = table
        if sigmas is None or values.shape[0] == 1:
            lam = values[:1]
        else:
            s = sigmas.detach().amax().reshape(1).to(step_sigmas.dtype)
            pos = torch.searchsorted(step_sigmas, s).clamp_(max=values.shape[0] - 1)
            lam = values.index_select(0, pos)
        lam = lam.to(dtype).reshape(1, 1, 1)
        self._lams[(branch, dtype)] = (sigmas, lam)
        return lam

    def lambda_per_step(self, branch) -> list[float]:
        """λ at each step of this run's schedule (step i starts at schedule[i]); outside a
        sampler, the one value used for every call (the schedule's start)."""
        prompt = branch.prompt
        steps = (self.schedule or [])[:-1]
        if not steps or self.model_sampling is None:
            return [prompt.schedule.value(0.0, prompt.weight)]
        plan = self.plan(branch)
        inside = [i for i, s in enumerate(steps) if plan.sigma_end <= s <= plan.sigma_start]
        first, last = (inside[0], inside[-1]) if inside else (0, len(steps) - 1)
        span = max(1, last - first)
        return [prompt.schedule.value((i - first) / span, prompt.weight) for i in range(len(steps))]

    def _lambda_table(self, branch, device):
        """(step start sigmas ascending, λ in the same order), on ``device``, once per run."""
        values = self.lambda_per_step(branch)
        steps = (self.schedule or [])[:len(values)]
        if len(steps) != len(values):
            steps = [0.0] * len(values)
        return (torch.tensor(steps[::-1], dtype=torch.float64).to(device),
                torch.tensor(values[::-1], dtype=torch.float32).to(device))

    # ------------------------------------------------------------ per call layout

    def _chunks(self):
        """uuid -> (role, area) of the guider's conds, built at the first call (conds are
        processed, areas resolved to latent units, by then)."""
        if self._chunk_info is None:
            info = {}
            source = self._conds() if callable(self._conds) else self._conds
            for name, conds in (source or {}).items():
                role = NEGATIVE if "negative" in name else POSITIVE
                for c in conds or ():
                    if isinstance(c, dict) and "uuid" in c:
                        info[c["uuid"]] = (role, c.get("area"))
            self._chunk_info = info
        return self._chunk_info

    def roles(self, extra_options) -> tuple[int, ...]:
        """The token set (POSITIVE/NEGATIVE) of each chunk of the call.

        ``cond_or_uncond`` holds the index of each chunk's cond in the list the guider passed to
        calc_cond_batch, not a role: CFGGuider passes [positive, negative], DualCFGGuider
        [negative, middle, positive], PerpNeg [positive, negative, empty]. The role comes from
        the guider's name for that cond (``negative``, ``empty_negative_prompt``: negative
        image tokens; every other: positive), found by its uuid. A chunk of a cond the guider
        does not hold (outside a sampler, or conds a cfg function adds) follows CFGGuider's
        convention: index 1 is the negative.
        """
        cou = extra_options.get("cond_or_uncond") or (POSITIVE,)
        uuids = extra_options.get("uuids")
        info = self._chunks()
        out = []
        for j, code in enumerate(cou):
            hit = info.get(uuids[j]) if uuids is not None and j < len(uuids) else None
            out.append(hit[0] if hit is not None else (NEGATIVE if code == NEGATIVE else POSITIVE))
        return tuple(out)

    def row_index(self, roles: tuple[int, ...], rows: int, device) -> torch.Tensor:
        """Token-set index per batch row, cached per layout: chunks are ``rows / len(roles)`` long."""
        key = (roles, rows, device)
        hit = self._rows.get(key)
        if hit is None:
            if rows % len(roles):
                raise ValueError(f"batch of {rows} rows cannot be split into {len(roles)} chunks")
            codes = torch.tensor(roles, dtype=torch.long)
            hit = self._rows[key] = codes.repeat_interleave(rows // len(roles)).to(device)
        return hit

    def frame_plan(self, branch, per_chunk: int = 1):
        """The branch's frames resolved on this run's latent batch (one per frame prompts)."""
        plan = self._frame_plans.get(branch)
        if plan is None:
            frames = self.frames or per_chunk
            prompt = branch.prompt
            plan = self._frame_plans[branch] = plan_frames(prompt.frame_spec(), prompt.positive.shape[0], frames)
        return plan

    def frame_tracks(self, branch, sets: tuple[int, ...], extra_options, rows: int, dtype, device):
        """Per track (one; two where images cross-fade): (token-set index [rows], λ multiplier
        [rows, 1, 1] or None) for a call whose chunks use token sets ``sets``; the rows of a
        context window get the frames the window covers. Cached per layout."""
        window = call_window(extra_options)
        key = (branch, sets, rows, window, dtype, device)
        hit = self._tracks.get(key)
        if hit is None:
            per_chunk = rows // len(sets)
            plan = self.frame_plan(branch, per_chunk)
            frames = chunk_frames(per_chunk, plan.frames, window, what="embeds (one per frame)")
            hit = self._tracks[key] = [
                (torch.tensor(index, dtype=torch.long).to(device),
                 None if w is None else torch.tensor(w, dtype=dtype).reshape(-1, 1, 1).to(device))
                for index, w in row_tracks(plan, sets, per_chunk, frames, branch.prompt.positive.shape[0], ZERO_SET)]
        return hit

    def mask(self, branch, extra_options, n_tokens: int, rows: int, dtype, device):
        """The branch's mask on this call's token grid: [rows or 1, n_tokens, 1], or None."""
        if branch.mask is None:
            return None
        call_hw = tuple(extra_options["original_shape"][-2:])
        uuids = tuple(extra_options.get("uuids") or ())
        chunks = len(extra_options.get("cond_or_uncond") or (0,))
        window = call_window(extra_options)
        key = (branch, call_hw, n_tokens, rows, uuids, window, dtype, device)
        hit = self._masks.get(key)
        if hit is None:
            hit = self._masks[key] = self._build_mask(branch.mask, call_hw, uuids, chunks, window, n_tokens,
                                                      rows, dtype, device)
        return hit

    def _build_mask(self, mask, call_hw, uuids, chunks, window, n_tokens, rows, dtype, device):
        latent_hw = tuple(self.latent_shape[-2:]) if self.latent_shape else call_hw
        per_chunk = rows // chunks
        info = self._chunks()
        parts = []
        for j in range(chunks):
            area = _call_area(info.get(uuids[j], (None, None))[1] if j < len(uuids) else None, latent_hw)
            if area is None and call_hw != latent_hw:
                # a cropped call whose area is unknown (outside a sampler): the whole mask, squeezed
                log.debug("mask for a %s call of a %s latent without a known area", call_hw, latent_hw)
            m = crop_to_area(mask_rows(mask, per_chunk, window), latent_hw, area)
            # built on the mask's own (host) device; one copy to the call's device at the end
            parts.append(resize_to_tokens(m, call_hw, n_tokens, dtype, m.device))
        if all(p.shape[0] == 1 for p in parts) and all(torch.equal(parts[0], p) for p in parts[1:]):
            return parts[0].to(device)  # one row broadcasts over the batch
        return torch.cat([p.expand(per_chunk, -1, -1) for p in parts]).to(device)


def _call_area(area, latent_hw):
    """An area cond's (height, width, y, x) in latent units as the sampler crops it, or None
    when it covers the whole latent."""
    if area is None or len(area) != 4 or isinstance(area[0], str):
        return None
    H, W = latent_hw
    h, w, y, x = (int(a) for a in area)
    h, w = min(H - y, h), min(W - x, w)
    if (h, w, y, x) == (H, W, 0, 0):
        return None
    return h, w, y, x
