"""Tiled references: one image prompt per square tile of a long reference, and the enhanced
encode (whole-image features mixed with those of a grid of cells)."""
import torch
from comfy_api.latest import io

from ..ip_adapter_core.apply.image_prompt import apply_image_prompt
from ..ip_adapter_core.prompt.tiles import (
    MAX_ENHANCE_TILES,
    MAX_TILES,
    MIN_TILE_SIZE,
    PLACEMENTS,
    TILE_BATCHES,
    enhanced_features,
    tiled_prompts,
)
from ..ip_adapter_core.prompt.vision import check_encoder
from .types import CATEGORY, IPAModel, weight_inputs, weight_type_inputs


class IPAApplyTiled(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAApplyTiled", display_name="IP-Adapter Tiled", category=CATEGORY,
            description="Cuts a reference of any aspect ratio into overlapping square tiles (side = its short "
                        "side) so nothing is cropped away, and applies each tile's image prompt.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 or SDXL model; it is not changed."),
                IPAModel.Input("ipadapter", tooltip="From IP-Adapter Loader."),
                io.ClipVision.Input("clip_vision", tooltip="The encoder the adapter needs."),
                io.Image.Input("image", tooltip="The reference; a batch is tiled image by image at the same places "
                                                "and each tile's images are concatenated (or one per frame: see "
                                                "batch)."),
                *weight_inputs(),
                io.Combo.Input("placement", options=list(PLACEMENTS), default=PLACEMENTS[0],
                               tooltip="where the tile lies: each tile acts only on the part of the picture that "
                                       "matches its place in the reference (stretched to the picture; overlaps "
                                       "shared evenly). everywhere: all tiles' tokens together, on the whole picture."),
                io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Fraction of sampling at which the image prompt starts."),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Fraction of sampling at which it stops."),
                # min stays 0 (0 = the short side): the schema cannot say "0 or >= 8"; the core refuses 1..7
                io.Int.Input("tile_size", default=0, min=0, max=8192, step=MIN_TILE_SIZE, optional=True,
                             tooltip=f"Side of the square tiles in reference pixels; 0 = the reference's short "
                                     f"side, else at least {MIN_TILE_SIZE}. At most {MAX_TILES} tiles."),
                *weight_type_inputs(),
                # last, so that saved workflows keep their widget order
                io.Combo.Input("batch", options=list(TILE_BATCHES), default=TILE_BATCHES[0], optional=True,
                               tooltip="A batch of references. together: every frame of the latent batch gets "
                                       "all images' tiles. one per frame (animation, as IPAdapter Tiled Batch): "
                                       "frame k gets only image k's tiles, the last image holding when there are "
                                       "fewer images; with placement everywhere, all of image k's tiles at once."),
            ],
            outputs=[io.Model.Output(), io.Image.Output(display_name="tiles"), io.Mask.Output(display_name="masks")])

    @classmethod
    def execute(cls, model, ipadapter, clip_vision, image, weight, placement, start_at=0.0, end_at=1.0,
                tile_size=0, weight_type="linear", batch="together") -> io.NodeOutput:
        check_encoder(ipadapter.config, clip_vision)
        prompts, regions, crops, masks = tiled_prompts(ipadapter, clip_vision, image, placement, tile_size or 0,
                                                       batch or "together")
        for prompt, region in zip(prompts, regions):  # chained: one branch per prompt
            prompt = prompt.weighted(weight, "all", "", start_at, end_at, weight_type or "linear")
            model = apply_image_prompt(model, ipadapter, prompt, region)
        return io.NodeOutput(model, torch.cat(crops), masks)


class IPAEncodeEnhanced(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAEncodeEnhanced", display_name="IP-Adapter Encode (Enhanced)", category=CATEGORY,
            description="CLIP features of the whole image (centre crop) mixed with those of a grid of cells, "
                        "which see finer detail: (1 - ratio)·whole + ratio·merged cells.",
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="The encoder the adapter needs (ViT-H/14 or ViT-bigG/14)."),
                io.Image.Input("image", tooltip="Reference image(s); each is enhanced on its own."),
                io.Int.Input("enhance_tiles", default=2, min=1, max=MAX_ENHANCE_TILES,
                             tooltip="Cells per side: 2 cuts each image into 2×2 cells. 1 = the plain encode."),
                io.Float.Input("enhance_ratio", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of the cells' features: 0 = the plain encode, 1 = the cells only."),
            ],
            outputs=[io.ClipVisionOutput.Output(display_name="image_features")])

    @classmethod
    def execute(cls, clip_vision, image, enhance_tiles, enhance_ratio) -> io.NodeOutput:
        return io.NodeOutput(enhanced_features(clip_vision, image, enhance_tiles, enhance_ratio))
