"""The node schemas of cubiq/ComfyUI_IPAdapter_plus (commit 9d076a3, IPAdapterPlus.py), as data.

Read from its ``INPUT_TYPES``/``RETURN_TYPES`` (facts, not code): for every node id, its sockets
(input name, type), its widgets in the order the editor stores them in ``widgets_values`` (name,
default, combo options; None for file lists) and its outputs. Old files store fewer widget values
(the extension appended inputs at the end); the converter fills the rest with these defaults, as the
editor does. Their widgets have no editor-only extra values (no seed, no upload button).
"""
from __future__ import annotations

from typing import NamedTuple


class Widget(NamedTuple):
    name: str
    default: object
    options: tuple | None = None


class Schema(NamedTuple):
    sockets: tuple  # (name, type), required then optional
    widgets: tuple  # Widget, in widgets_values order
    outputs: tuple  # (name, type)


# Option lists that several nodes share.
WEIGHT_TYPES = ('linear', 'ease in', 'ease out', 'ease in-out', 'reverse in-out', 'weak input', 'weak output',
                'weak middle', 'strong middle', 'style transfer', 'composition', 'strong style transfer',
                'style and composition', 'style transfer precise', 'composition precise')
COMBINE = ('concat', 'add', 'subtract', 'average', 'norm average')
SCALING = ('V only', 'K+V', 'K+V w/ C penalty', 'K+mean(V) w/ C penalty')
PRESETS = ('LIGHT - SD1.5 only (low strength)', 'STANDARD (medium strength)', 'VIT-G (medium strength)',
             'PLUS (high strength)', 'PLUS FACE (portraits)', 'FULL FACE - SD1.5 only (portraits stronger)')
FACEID_PRESETS = ('FACEID', 'FACEID PLUS - SD1.5 only', 'FACEID PLUS V2', 'FACEID PORTRAIT (style transfer)',
             'FACEID PORTRAIT UNNORM - SDXL only (strong)')

NODES = {
    'IPAdapter': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('attn_mask', 'MASK')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('weight_type', 'standard', ('standard', 'prompt is more important', 'style transfer')),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterAdvanced': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('weight_type', 'linear', WEIGHT_TYPES),
            Widget('combine_embeds', 'concat', COMBINE),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterBatch': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('weight_type', 'linear', WEIGHT_TYPES),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
            Widget('encode_batch_size', 0, None),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterFaceID': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION'), ('insightface', 'INSIGHTFACE')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('weight_faceidv2', 1.0, None),
            Widget('weight_type', 'linear', WEIGHT_TYPES),
            Widget('combine_embeds', 'concat', COMBINE),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'), ('face_image', 'IMAGE'))),
    'IPAdapterFaceIDKolors': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION'), ('insightface', 'INSIGHTFACE')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('weight_faceidv2', 1.0, None),
            Widget('weight_kolors', 1.0, None),
            Widget('weight_type', 'linear', WEIGHT_TYPES),
            Widget('combine_embeds', 'concat', COMBINE),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'), ('face_image', 'IMAGE'))),
    'IPAAdapterFaceIDBatch': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION'), ('insightface', 'INSIGHTFACE')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('weight_faceidv2', 1.0, None),
            Widget('weight_type', 'linear', WEIGHT_TYPES),
            Widget('combine_embeds', 'concat', COMBINE),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'), ('face_image', 'IMAGE'))),
    'IPAdapterTiled': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('weight_type', 'linear', WEIGHT_TYPES),
            Widget('combine_embeds', 'concat', COMBINE),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('sharpening', 0.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'), ('tiles', 'IMAGE'), ('masks', 'MASK'))),
    'IPAdapterTiledBatch': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('weight_type', 'linear', WEIGHT_TYPES),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('sharpening', 0.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
            Widget('encode_batch_size', 0, None),
        ),
        outputs=(('MODEL', 'MODEL'), ('tiles', 'IMAGE'), ('masks', 'MASK'))),
    'IPAdapterEmbeds': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('pos_embed', 'EMBEDS'), ('neg_embed', 'EMBEDS'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('weight_type', 'linear', WEIGHT_TYPES),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterEmbedsBatch': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('pos_embed', 'EMBEDS'), ('neg_embed', 'EMBEDS'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('weight_type', 'linear', WEIGHT_TYPES),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterStyleComposition': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image_style', 'IMAGE'),
                 ('image_composition', 'IMAGE'), ('image_negative', 'IMAGE'), ('attn_mask', 'MASK'),
                 ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight_style', 1.0, None),
            Widget('weight_composition', 1.0, None),
            Widget('expand_style', False, None),
            Widget('combine_embeds', 'average', COMBINE),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterStyleCompositionBatch': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image_style', 'IMAGE'),
                 ('image_composition', 'IMAGE'), ('image_negative', 'IMAGE'), ('attn_mask', 'MASK'),
                 ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight_style', 1.0, None),
            Widget('weight_composition', 1.0, None),
            Widget('expand_style', False, None),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterMS': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION'), ('insightface', 'INSIGHTFACE')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('weight_faceidv2', 1.0, None),
            Widget('weight_type', 'linear', WEIGHT_TYPES),
            Widget('combine_embeds', 'concat', COMBINE),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
            Widget('layer_weights', '', None),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterClipVisionEnhancer': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('weight_type', 'linear', WEIGHT_TYPES),
            Widget('combine_embeds', 'concat', COMBINE),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
            Widget('enhance_tiles', 2, None),
            Widget('enhance_ratio', 1.0, None),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterClipVisionEnhancerBatch': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('weight_type', 'linear', WEIGHT_TYPES),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
            Widget('enhance_tiles', 2, None),
            Widget('enhance_ratio', 0.5, None),
            Widget('encode_batch_size', 0, None),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterFromParams': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('ipadapter_params', 'IPADAPTER_PARAMS'),
                 ('image_negative', 'IMAGE'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('combine_embeds', 'concat', COMBINE),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterPreciseStyleTransfer': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('style_boost', 1.0, None),
            Widget('combine_embeds', 'concat', COMBINE),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterPreciseStyleTransferBatch': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('style_boost', 1.0, None),
            Widget('combine_embeds', 'concat', COMBINE),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterPreciseComposition': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('composition_boost', 0.0, None),
            Widget('combine_embeds', 'concat', COMBINE),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterPreciseCompositionBatch': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('image_negative', 'IMAGE'),
                 ('attn_mask', 'MASK'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight', 1.0, None),
            Widget('composition_boost', 0.0, None),
            Widget('combine_embeds', 'concat', COMBINE),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
            Widget('embeds_scaling', 'V only', SCALING),
        ),
        outputs=(('MODEL', 'MODEL'),)),
    'IPAdapterUnifiedLoader': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER')),
        widgets=(
            Widget('preset', 'LIGHT - SD1.5 only (low strength)', PRESETS),
        ),
        outputs=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'))),
    'IPAdapterUnifiedLoaderFaceID': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER')),
        widgets=(
            Widget('preset', 'FACEID', FACEID_PRESETS),
            Widget('lora_strength', 0.6, None),
            Widget('provider', 'CPU', ('CPU', 'CUDA', 'ROCM', 'DirectML', 'OpenVINO', 'CoreML')),
        ),
        outputs=(('MODEL', 'MODEL'), ('ipadapter', 'IPADAPTER'))),
    'IPAdapterModelLoader': Schema(
        sockets=(),
        widgets=(
            Widget('ipadapter_file', None, None),
        ),
        outputs=(('IPADAPTER', 'IPADAPTER'),)),
    'IPAdapterInsightFaceLoader': Schema(
        sockets=(),
        widgets=(
            Widget('provider', 'CPU', ('CPU', 'CUDA', 'ROCM')),
            Widget('model_name', 'buffalo_l', ('buffalo_l', 'antelopev2')),
        ),
        outputs=(('INSIGHTFACE', 'INSIGHTFACE'),)),
    'IPAdapterUnifiedLoaderCommunity': Schema(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER')),
        widgets=(
            Widget('preset', 'Composition', ('Composition', 'Kolors')),
        ),
        outputs=(('model', 'MODEL'), ('ipadapter', 'IPADAPTER'))),
    'IPAdapterEncoder': Schema(
        sockets=(('ipadapter', 'IPADAPTER'), ('image', 'IMAGE'), ('mask', 'MASK'), ('clip_vision', 'CLIP_VISION')),
        widgets=(
            Widget('weight', 1.0, None),
        ),
        outputs=(('pos_embed', 'EMBEDS'), ('neg_embed', 'EMBEDS'))),
    'IPAdapterCombineEmbeds': Schema(
        sockets=(('embed1', 'EMBEDS'), ('embed2', 'EMBEDS'), ('embed3', 'EMBEDS'), ('embed4', 'EMBEDS'),
                 ('embed5', 'EMBEDS')),
        widgets=(
            Widget('method', 'concat', ('concat', 'add', 'subtract', 'average', 'norm average', 'max', 'min')),
        ),
        outputs=(('EMBEDS', 'EMBEDS'),)),
    'IPAdapterNoise': Schema(
        sockets=(('image_optional', 'IMAGE'),),
        widgets=(
            Widget('type', 'fade', ('fade', 'dissolve', 'gaussian', 'shuffle')),
            Widget('strength', 1.0, None),
            Widget('blur', 0, None),
        ),
        outputs=(('IMAGE', 'IMAGE'),)),
    'PrepImageForClipVision': Schema(
        sockets=(('image', 'IMAGE'),),
        widgets=(
            Widget('interpolation', 'LANCZOS', ('LANCZOS', 'BICUBIC', 'HAMMING', 'BILINEAR', 'BOX', 'NEAREST')),
            Widget('crop_position', 'top', ('top', 'bottom', 'left', 'right', 'center', 'pad')),
            Widget('sharpening', 0.0, None),
        ),
        outputs=(('IMAGE', 'IMAGE'),)),
    'IPAdapterSaveEmbeds': Schema(
        sockets=(('embeds', 'EMBEDS'),),
        widgets=(
            Widget('filename_prefix', 'IP_embeds', None),
        ),
        outputs=()),
    'IPAdapterLoadEmbeds': Schema(
        sockets=(),
        widgets=(
            Widget('embeds', None, None),
        ),
        outputs=(('EMBEDS', 'EMBEDS'),)),
    'IPAdapterWeights': Schema(
        sockets=(('image', 'IMAGE'),),
        widgets=(
            Widget('weights', '1.0, 0.0', None),
            Widget('timing', 'linear', ('custom', 'linear', 'ease_in_out', 'ease_in', 'ease_out', 'random')),
            Widget('frames', 0, None),
            Widget('start_frame', 0, None),
            Widget('end_frame', 9999, None),
            Widget('add_starting_frames', 0, None),
            Widget('add_ending_frames', 0, None),
            Widget('method', 'full batch', ('full batch', 'shift batches', 'alternate batches')),
        ),
        outputs=(('weights', 'FLOAT'), ('weights_invert', 'FLOAT'), ('total_frames', 'INT'), ('image_1', 'IMAGE'),
                 ('image_2', 'IMAGE'), ('weights_strategy', 'WEIGHTS_STRATEGY'))),
    'IPAdapterCombineWeights': Schema(
        sockets=(),
        widgets=(
            Widget('weights_1', 0.0, None),
            Widget('weights_2', 0.0, None),
        ),
        outputs=(('weights', 'FLOAT'), ('count', 'INT'))),
    'IPAdapterWeightsFromStrategy': Schema(
        sockets=(('weights_strategy', 'WEIGHTS_STRATEGY'), ('image', 'IMAGE')),
        widgets=(),
        outputs=(('weights', 'FLOAT'), ('weights_invert', 'FLOAT'), ('total_frames', 'INT'), ('image_1', 'IMAGE'),
                 ('image_2', 'IMAGE'), ('weights_strategy', 'WEIGHTS_STRATEGY'))),
    'IPAdapterPromptScheduleFromWeightsStrategy': Schema(
        sockets=(('weights_strategy', 'WEIGHTS_STRATEGY'),),
        widgets=(
            Widget('prompt', '', None),
        ),
        outputs=(('prompt_schedule', 'STRING'),)),
    'IPAdapterRegionalConditioning': Schema(
        sockets=(('image', 'IMAGE'), ('mask', 'MASK'), ('positive', 'CONDITIONING'), ('negative', 'CONDITIONING')),
        widgets=(
            Widget('image_weight', 1.0, None),
            Widget('prompt_weight', 1.0, None),
            Widget('weight_type', 'linear', WEIGHT_TYPES),
            Widget('start_at', 0.0, None),
            Widget('end_at', 1.0, None),
        ),
        outputs=(('IPADAPTER_PARAMS', 'IPADAPTER_PARAMS'), ('POSITIVE', 'CONDITIONING'), ('NEGATIVE', 'CONDITIONING'))),
    'IPAdapterCombineParams': Schema(
        sockets=(('params_1', 'IPADAPTER_PARAMS'), ('params_2', 'IPADAPTER_PARAMS'), ('params_3', 'IPADAPTER_PARAMS'),
                 ('params_4', 'IPADAPTER_PARAMS'), ('params_5', 'IPADAPTER_PARAMS')),
        widgets=(),
        outputs=(('IPADAPTER_PARAMS', 'IPADAPTER_PARAMS'),)),
}
