"""Rules for their frame-weight nodes: IPAdapterWeights and the strategy nodes that repeat its settings
(IPAdapterWeightsFromStrategy, IPAdapterPromptScheduleFromWeightsStrategy), and IPAdapterCombineWeights.

Their WEIGHTS_STRATEGY wire carries IPAdapterWeights' widget values (and its image count); nothing here has such
a wire, so each strategy node is converted from the values of the IPAdapterWeights that feeds it, which its rule
records. Formulas: IPAdapterPlus.py (``IPAdapterWeights.weights``, ``prompt_schedule``, ``combine``).
"""
from __future__ import annotations

from .context import Ctx, Unconvertible

# Their IPAdapterWeights timings are named after the curve's derivative at the start; ours after the
# shape (ease in = starts slowly): their ease_in, sin(x·π/2), is our ease out, and the other way round.
TIMINGS = {"linear": "linear", "ease_in": "ease out", "ease_out": "ease in", "ease_in_out": "ease in-out",
           "random": "random"}
STRATEGY = ("weights", "timing", "frames", "start_frame", "end_frame", "add_starting_frames", "add_ending_frames",
            "method")


def frame_weights(c: Ctx, values: dict, image) -> None:
    """IPAdapterWeights' outputs from its settings ``values`` (widget values or links) and its image input."""
    timing, method = values["timing"], values["method"]
    if timing == "custom":
        raise Unconvertible("timing custom: there is no node here that turns a typed list into FLOAT weights")
    if method != "full batch":
        raise Unconvertible(f"method {method}: only 'full batch' has an equivalent (IP-Adapter Frames)")
    try:
        numbers = [float(x) for x in str(values["weights"]).replace("\n", ",").split(",") if x.strip()]
    except ValueError:
        raise Unconvertible(f"weights {values['weights']!r}: expected numbers separated by commas") from None
    start, end = (numbers[0], numbers[-1]) if numbers else (0.0, 1.0)
    frames = values["frames"]
    if not isinstance(frames, tuple):
        frames = max(int(frames), 2)   # theirs: at least 2 frames for a curve
    for name, default in (("start_frame", 0), ("add_starting_frames", 0), ("add_ending_frames", 0)):
        if values[name] != default:
            c.lost(f"{name} = {values[name]} (IP-Adapter Frame Weights ramps over all frames)")
    if not isinstance(frames, tuple) and values["end_frame"] < frames:
        c.lost(f"end_frame = {values['end_frame']} (IP-Adapter Frame Weights ramps over all frames)")
    if timing == "random":
        c.note("random: the same range, other numbers (ours is seeded, theirs not reproducible)")
    if image is not None and (c.used(0) or c.used(1) or c.used(3) or c.used(4)):
        c.lost("image: theirs repeats the curve once per image and each image `frames` times on image_1 (a batch "
               "of images × frames); here the curve spans `frames` frames and image_1/image_2 are the images as "
               "given: repeat them with core Image nodes (Repeat Image Batch) for the same timing")
    curve = TIMINGS[timing]
    c.e.facts[c.node.id] = {"first": start, "strategy": values, "image": image}
    key = c.add("IPAFrameWeights", main=True, frames=frames, curve=curve, start_weight=start, end_weight=end,
                seed=0)
    c.out(0, c.ref(key))
    if c.used(1):   # weights_invert is the list reversed: the mirrored curve from end to start
        mirrored = {"ease in": "ease out", "ease out": "ease in"}.get(curve, curve)
        c.out(1, c.ref(c.add("IPAFrameWeights", frames=frames, curve=mirrored, start_weight=end, end_weight=start,
                             seed=0)))
    if c.used(2):
        c.out(2, c.ref(c.add("PrimitiveInt", value=frames)))
    c.out(3, image)
    c.out(4, image)
    c.out(5, None)    # the strategy: the nodes that read it are converted from the facts recorded above


def weights(c: Ctx):
    values = {name: c.v(name) for name in STRATEGY}
    values["frames"] = c.w("frames")   # a linked frame count stays linked
    frame_weights(c, values, c.src("image"))


def strategy(c: Ctx) -> dict:
    """The facts IPAdapterWeights recorded for the strategy that feeds this node."""
    up = c.upstream("weights_strategy")
    fact = c.e.facts.get(up[0].id, {}) if up is not None else {}
    if "strategy" not in fact:
        raise Unconvertible("weights_strategy must come from IPAdapterWeights (or a strategy node fed by one)")
    return fact


def from_strategy(c: Ctx):
    """IPAdapterWeightsFromStrategy: IPAdapterWeights' outputs again, with this node's image."""
    fact = strategy(c)
    frame_weights(c, fact["strategy"], c.src("image"))
    c.e.facts[c.node.id]["image"] = fact["image"]   # a strategy's frame count is its first node's image


def prompt_schedule(c: Ctx):
    """IPAdapterPromptScheduleFromWeightsStrategy → IP-Adapter Prompt Schedule with the strategy's settings (the
    raw frames value, as theirs) and the image whose batch size is the strategy's frame count."""
    fact = strategy(c)
    values = fact["strategy"]
    c.out(0, c.ref(c.add("IPAPromptSchedule", main=True, prompt=c.w("prompt"), frames=values["frames"],
                         add_starting_frames=values["add_starting_frames"],
                         add_ending_frames=values["add_ending_frames"], image=fact["image"])))


def combine_weights(c: Ctx):
    """IPAdapterCombineWeights: the two lists one after the other; a number stored in the widget (not linked)
    becomes a one-element list through a Float primitive."""
    inputs = {}
    for name in ("weights_1", "weights_2"):
        value = c.w(name)
        inputs[name] = value if isinstance(value, tuple) else c.ref(c.add("PrimitiveFloat", value=value))
    key = c.add("IPAJoinFrameWeights", main=True, **inputs)
    c.out(0, c.ref(key, 0))
    c.out(1, c.ref(key, 1))


WEIGHTS_RULES = {
    "IPAdapterWeights": weights,
    "IPAdapterWeightsFromStrategy": from_strategy,
    "IPAdapterPromptScheduleFromWeightsStrategy": prompt_schedule,
    "IPAdapterCombineWeights": combine_weights,
}
