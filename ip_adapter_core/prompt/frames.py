"""Animation: which reference image, and how much λ, each frame of a latent batch gets.

An image prompt made "one per frame" holds N token sets (one per reference image). A sampling run
of F frames resolves its ``FrameSpec`` to a ``FramePlan``: per frame, the image (or, during a
transition, the two images) it attends to and each one's multiplier of λ. The plan is pure data,
resolved once per run against the whole latent batch (frame numbers are those of the full batch,
also when ComfyUI's context windows sample a few frames at a time); ``run_state`` turns it into
per-row indices and weights.

    images:   frame f holds image i for frames_per_image frames (1: frame i = image i, the last image
              holding to the end; 0: the images spread evenly over the frames)
    transitions: the last ``transition_frames`` frames of each image's stretch cross-fade into the
              next image: weight of the next = curve(j / (t + 1)), j = 1..t, of the current 1 - that
    weights:  a multiplier of λ per frame: a FLOAT list (the last value repeats), e.g. from
              ``curve_weights`` (start to end: linear, eases, alternate, random with a seed), two
              joined by ``join_weights``
    prompt schedule: ``prompt_schedule`` writes the text keyframes of a prompt per image for
              other packs' batch prompt schedules
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..errors import IPAdapterError
from ..input_bounds import MAX_FRAMES, check_count, check_magnitudes

log = logging.getLogger("ipadapter")

TRANSITIONS = ("linear", "ease in", "ease out", "ease in-out")
WEIGHT_CURVES = TRANSITIONS + ("alternate", "random")


def ease(curve: str, t: float) -> float:
    """0 at t = 0, 1 at t = 1: linear; ease in starts slowly (1 - cos(t·π/2)), ease out ends
    slowly (sin(t·π/2)), ease in-out both ((1 - cos(t·π)) / 2)."""
    if curve == "linear":
        return t
    if curve == "ease in":
        return 1.0 - math.cos(t * math.pi / 2)
    if curve == "ease out":
        return math.sin(t * math.pi / 2)
    if curve == "ease in-out":
        return (1.0 - math.cos(t * math.pi)) / 2
    raise IPAdapterError(f"curve: expected one of {', '.join(TRANSITIONS)}; got {curve!r}.")


@dataclass(frozen=True)
class FrameSpec:
    """How the frames of a run share the images and λ (resolved per run: the frame count is the
    latent batch being sampled)."""

    frames_per_image: int = 1
    transition_frames: int = 0
    transition: str = "linear"
    weights: tuple[float, ...] | None = None  # λ multiplier per frame (None: 1 on every frame)

    def __post_init__(self):
        if self.frames_per_image < 0 or self.transition_frames < 0:
            raise IPAdapterError(f"frames_per_image / transition_frames: expected numbers >= 0; got "
                                 f"{self.frames_per_image}, {self.transition_frames}.")
        if self.transition not in TRANSITIONS:
            raise IPAdapterError(f"transition: expected one of {', '.join(TRANSITIONS)}; got {self.transition!r}.")
        if self.weights is not None:
            check_weights(self.weights)


def check_weights(weights, what: str = "frame_weights") -> None:
    if not weights:
        raise IPAdapterError(f"{what}: the list is empty; give one weight per frame (or leave it unconnected: "
                             "1 on every frame).")
    check_count(len(weights), MAX_FRAMES, what, "weights")
    check_magnitudes(weights, what)


@dataclass(frozen=True)
class FramePlan:
    """Per track (one, or two where images cross-fade): the image index of each frame and its
    multiplier of λ. A frame outside any transition has weight 0 on the second track."""

    images: tuple[tuple[int, ...], ...]
    weights: tuple[tuple[float, ...], ...]

    @property
    def frames(self) -> int:
        return len(self.images[0])


def parse_weights(value, what: str = "frame_weights") -> tuple[float, ...] | None:
    """A FLOAT list from another node (a list or tuple of numbers, or one number) -> a tuple; more than
    MAX_FRAMES entries are refused before any is read."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    if isinstance(value, torch.Tensor):
        check_count(value.numel(), MAX_FRAMES, what, "weights")
        value = value.flatten().tolist()
    if isinstance(value, (list, tuple)):
        check_count(len(value), MAX_FRAMES, what, "weights")
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return tuple(float(v) for v in value)
    raise IPAdapterError(f"{what}: expected a list of numbers (a FLOAT list, one per frame); got "
                         f"{type(value).__name__} {str(value)[:60]}.")


def stretches(n_images: int, n_frames: int, frames_per_image: int) -> list[int]:
    """Start frame of each image's stretch (n_images + 1 entries, the last = n_frames; an image
    whose start is at or after the end is never shown)."""
    if frames_per_image == 0:  # spread evenly: round(i·F/N), halves up, in integers
        return [(2 * i * n_frames + n_images) // (2 * n_images) for i in range(n_images)] + [n_frames]
    return [min(i * frames_per_image, n_frames) for i in range(n_images)] + [n_frames]


def curve_weights(curve: str, frames: int, start: float, end: float, seed: int = 0) -> list[float]:
    """λ multipliers for ``frames`` frames: linear and the eases go from ``start`` on the first frame
    to ``end`` on the last; alternate gives start on even frames, end on odd ones; random draws each
    uniformly between the two (torch's generator with ``seed``: the same list on every machine)."""
    if not 1 <= frames <= MAX_FRAMES:
        raise IPAdapterError(f"frames: expected at least 1 frame and at most {MAX_FRAMES:,}; got {frames}.")
    check_weights([start, end], "start_weight / end_weight")
    if curve == "alternate":
        return [start if f % 2 == 0 else end for f in range(frames)]
    if curve == "random":
        g = torch.Generator().manual_seed(int(seed))
        u = torch.rand(frames, generator=g, dtype=torch.float64).tolist()
        return [start + (end - start) * x for x in u]
    if curve not in TRANSITIONS:
        raise IPAdapterError(f"curve: expected one of {', '.join(WEIGHT_CURVES)}; got {curve!r}.")
    span = max(1, frames - 1)
    return [start + (end - start) * ease(curve, f / span) for f in range(frames)]


def join_weights(first, second) -> list[float]:
    """Two FLOAT lists (a single number counts as a list of one) one after the other, as
    ComfyUI_IPAdapter_plus's IPAdapterCombineWeights; at most MAX_FRAMES values in all."""
    a, b = parse_weights(first, "weights_1"), parse_weights(second, "weights_2")
    if a is None or b is None:
        raise IPAdapterError(f"weights_{1 if a is None else 2}: nothing connected; connect a FLOAT list (IP-Adapter "
                             "Frame Weights) or a number.")
    check_count(len(a) + len(b), MAX_FRAMES, "weights_1 and weights_2 joined", "weights")
    return list(a + b)


def prompt_schedule(prompt: str, frames: int, frame_count: int, add_starting_frames: int = 0,
                    add_ending_frames: int = 0) -> str:
    """A text prompt schedule ('"frame": "prompt",' lines, for FizzNodes' BatchPromptSchedule) from one
    prompt per line, exactly as ComfyUI_IPAdapter_plus's IPAdapterPromptScheduleFromWeightsStrategy:
    image i of ``frame_count`` starts at frame i·frames + add_starting_frames with line i (the last
    line repeats, extra lines are dropped); a line at 0 with the first prompt when there are starting
    frames, one after the last image with the last prompt when there are ending frames. Blank lines
    are skipped; no lines or no images give "". Prompts are written as they are (no escaping)."""
    for name, value in (("frames", frames), ("add_starting_frames", add_starting_frames),
                        ("add_ending_frames", add_ending_frames), ("image", frame_count)):
        if not 0 <= value <= MAX_FRAMES:
            raise IPAdapterError(f"{name}: expected 0 to {MAX_FRAMES:,} {'images' if name == 'image' else 'frames'}; "
                                 f"got {value:,}.")
    lines = [p for p in prompt.split("\n") if p.strip() != ""]
    if not lines or frame_count == 0:
        return ""
    lines = (lines + [lines[-1]] * frame_count)[:frame_count]
    out = [f'"0": "{lines[0]}",\n'] if add_starting_frames > 0 else []
    out += [f'"{i * frames + add_starting_frames}": "{line}",\n' for i, line in enumerate(lines)]
    if add_ending_frames > 0:
        out.append(f'"{frame_count * frames + add_starting_frames}": "{lines[-1]}",\n')
    return "".join(out)


def frame_weights(spec: FrameSpec, n_frames: int) -> list[float]:
    """λ multiplier per frame: the spec's list fitted to the frames (its last value repeats), or 1."""
    if spec.weights is None:
        return [1.0] * n_frames
    w = list(spec.weights)
    if len(w) != n_frames:
        log.warning("frame_weights: %d weights for %d frames; %s", len(w), n_frames,
                    "the last one repeats" if len(w) < n_frames else "the extra ones are not used")
    return (w + [w[-1]] * n_frames)[:n_frames]


def plan_frames(spec: FrameSpec, n_images: int, n_frames: int) -> FramePlan:
    """Resolve ``spec`` for ``n_images`` reference images on a batch of ``n_frames`` frames."""
    if n_images < 1 or n_frames < 1:
        raise ValueError(f"no frame plan for {n_images} images on {n_frames} frames")
    starts = stretches(n_images, n_frames, spec.frames_per_image)
    shown = [i for i in range(n_images) if starts[i] < starts[i + 1]]
    if len(shown) < n_images:
        log.warning("%d reference images on %d frames: image(s) %s get no frame (frames_per_image %d)",
                    n_images, n_frames, [i for i in range(n_images) if i not in shown][:8], spec.frames_per_image)
    image = [0] * n_frames
    for i in shown:
        image[starts[i]:starts[i + 1]] = [i] * (starts[i + 1] - starts[i])
    nxt, fade = list(image), [0.0] * n_frames
    t = spec.transition_frames
    for a, b in zip(shown, shown[1:]):  # a fades into b over the last frames of a's stretch
        length = starts[a + 1] - starts[a]
        steps = min(t, length - 1)  # each image is shown unmixed on at least one frame
        for j in range(1, steps + 1):
            f = starts[b] - steps - 1 + j
            nxt[f], fade[f] = b, ease(spec.transition, j / (steps + 1))
    lam = frame_weights(spec, n_frames)
    if not any(fade):
        return FramePlan((tuple(image),), (tuple(lam),))
    return FramePlan((tuple(image), tuple(nxt)),
                     (tuple(m * (1.0 - x) for m, x in zip(lam, fade)), tuple(m * x for m, x in zip(lam, fade))))


def row_tracks(plan: FramePlan, sets: tuple[int, ...], per_chunk: int, frames: list[int] | None,
               n_images: int, zero_set: int) -> list[tuple[list[int], list[float] | None]]:
    """Per track, the token-set index of every row of a call and its λ multiplier (None: all 1).

    The call's rows are ``len(sets)`` chunks (cond, uncond, ...) of ``per_chunk`` frames each:
    ``frames`` (a context window's frame numbers) or 0..per_chunk-1. The branch's K'/V' stack holds
    [N image sets; N negative sets; one zero set]: a chunk routed to set kind k (schedules' routes:
    image 0, negative 1, zeros ``zero_set``) gets set k·N + image of the frame."""
    frames = list(range(per_chunk)) if frames is None else frames
    out = []
    for images, weights in zip(plan.images, plan.weights):
        index = [zero_set * n_images if kind == zero_set else kind * n_images + images[f]
                 for kind in sets for f in frames]
        w = [weights[f] for _ in sets for f in frames]
        out.append((index, None if all(x == 1.0 for x in w) else w))
    return out
