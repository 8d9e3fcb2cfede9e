"""Combine nodes: several reference images into one image prompt, before projection
(CLIP features) or after it (projected embeds)."""
from comfy_api.latest import io

from ..ip_adapter_core.prompt.combine import combine_features, combine_prompts
from ..ip_adapter_core.prompt.tokens import COMBINE_MODES
from .types import CATEGORY, IPAEmbeds

SLOTS = 5
METHOD_TOOLTIP = ("concat keeps every image's tokens side by side; add (sum), subtract (the first minus the mean "
                  "of the others), average, norm average (each entry divided by its norm over the images), "
                  "max and min (elementwise) make one combined image.")


def _weight(i: int, name: str) -> io.Float.Input:
    return io.Float.Input(f"weight_{i}", default=1.0, min=-2.0, max=5.0, step=0.05, optional=i > 1,
                          tooltip=f"Multiplies {name}_{i} before combining (" + (
                              "every image of it)." if name == "features" else "its positive tokens)."))


def _slots(make, name: str, tooltip: str) -> list:
    """input_1 (required), weight_1, then optional input_2..5 each followed by its weight."""
    out = []
    for i in range(1, SLOTS + 1):
        out += [make(f"{name}_{i}", optional=i > 1, tooltip=tooltip if i == 1 else "Optional. " + tooltip),
                _weight(i, name)]
    return out


def _connected(name: str, inputs: dict) -> list:
    """[(input name, value, weight), ...] of the connected slots, in order."""
    return [(f"{name}_{i}", inputs[f"{name}_{i}"], inputs.get(f"weight_{i}", 1.0))
            for i in range(1, SLOTS + 1) if inputs.get(f"{name}_{i}") is not None]


class IPACombineFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPACombineFeatures", display_name="IP-Adapter Combine Features", category=CATEGORY,
            description="Combines the CLIP features of several reference images (all images of every input) "
                        "before projection. Encode them all with the same encoder.",
            inputs=[io.Combo.Input("method", options=list(COMBINE_MODES), default="average", tooltip=METHOD_TOOLTIP),
                    *_slots(io.ClipVisionOutput.Input, "features",
                            "From IP-Adapter Encode Image or CLIP Vision Encode.")],
            outputs=[io.ClipVisionOutput.Output(display_name="image_features")])

    @classmethod
    def execute(cls, method, **inputs) -> io.NodeOutput:  # features_1..5, weight_1..5
        return io.NodeOutput(combine_features(_connected("features", inputs), method))


class IPACombineEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPACombineEmbeds", display_name="IP-Adapter Combine Embeds", category=CATEGORY,
            description="Combines projected embeds of one adapter. The result has default weighting: weight it "
                        "after combining (IP-Adapter Weight); weighting of the inputs is dropped.",
            inputs=[io.Combo.Input("method", options=list(COMBINE_MODES), default="concat",
                                   tooltip=METHOD_TOOLTIP + " All but concat need the same token count "
                                           "and average the negatives."),
                    *_slots(IPAEmbeds.Input, "embeds", "From IP-Adapter Project (weighting applies after combining).")],
            outputs=[IPAEmbeds.Output(display_name="embeds")])

    @classmethod
    def execute(cls, method, **inputs) -> io.NodeOutput:  # embeds_1..5, weight_1..5
        return io.NodeOutput(combine_prompts(_connected("embeds", inputs), method))
