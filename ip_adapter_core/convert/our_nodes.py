"""The sockets, widget order and outputs of the nodes the converter writes, for the editor's UI format.

The UI format stores widget values by position and links by socket number, so writing one needs each
node's layout. These are this extension's nodes and the two core nodes the converter uses;
``tests/test_workflows_plus.py`` (test_our_node_table_matches_the_server) checks every entry against
the running server's ``/object_info``, so a node change that is not copied here fails the tests. ``CONTROL``
is the editor's extra "control after generate" value that follows a seed-like widget.
"""
from __future__ import annotations

from typing import NamedTuple

CONTROL = "control_after_generate"


class Spec(NamedTuple):
    sockets: tuple  # (name, type): inputs without a widget, required then optional
    widgets: tuple  # widget names in widgets_values order (CONTROL for the editor's extra value)
    outputs: tuple  # (name, type)
    widget_types: tuple = ()  # (name, type) of every widget, for linking a widget
    defaults: tuple = ()      # (name, default) of the widgets that have one


SPECS = {
    'IPAUnifiedLoader': Spec(
        sockets=(('model', 'MODEL'),),
        widgets=('preset',),
        outputs=(('ipadapter', 'IPA_MODEL'), ('clip_vision', 'CLIP_VISION')),
        widget_types=(('preset', 'COMBO'),),
        defaults=(('preset', 'STANDARD'),)),
    'IPALoader': Spec(
        sockets=(),
        widgets=('ipadapter_file',),
        outputs=(('ipadapter', 'IPA_MODEL'),),
        widget_types=(('ipadapter_file', 'COMBO'),),
        defaults=()),
    'IPACLIPVisionLoader': Spec(
        sockets=(('ipadapter', 'IPA_MODEL'),),
        widgets=(),
        outputs=(('CLIP_VISION', 'CLIP_VISION'),),
        widget_types=(),
        defaults=()),
    'IPAEncodeImage': Spec(
        sockets=(('clip_vision', 'CLIP_VISION'), ('image', 'IMAGE'), ('mask', 'MASK')),
        widgets=('crop', 'interpolation', 'sharpening', 'encode_batch_size'),
        outputs=(('image_features', 'CLIP_VISION_OUTPUT'),),
        widget_types=(('crop', 'COMBO'), ('interpolation', 'COMBO'), ('sharpening', 'FLOAT'),
                      ('encode_batch_size', 'INT')),
        defaults=(('crop', 'center'), ('interpolation', 'default'), ('sharpening', 0.0), ('encode_batch_size', 0))),
    'IPAEncodeEnhanced': Spec(
        sockets=(('clip_vision', 'CLIP_VISION'), ('image', 'IMAGE')),
        widgets=('enhance_tiles', 'enhance_ratio'),
        outputs=(('image_features', 'CLIP_VISION_OUTPUT'),),
        widget_types=(('enhance_tiles', 'INT'), ('enhance_ratio', 'FLOAT')),
        defaults=(('enhance_tiles', 2), ('enhance_ratio', 0.5))),
    'IPAProject': Spec(
        sockets=(('ipadapter', 'IPA_MODEL'), ('image_features', 'CLIP_VISION_OUTPUT'),
                 ('negative_features', 'CLIP_VISION_OUTPUT'), ('clip_vision', 'CLIP_VISION')),
        widgets=('combine', 'image_weights'),
        outputs=(('embeds', 'IPA_EMBEDS'),),
        widget_types=(('combine', 'COMBO'), ('image_weights', 'STRING')),
        defaults=(('combine', 'concat'), ('image_weights', ''))),
    'IPAWeight': Spec(
        sockets=(('embeds', 'IPA_EMBEDS'),),
        widgets=('weight', 'blocks', 'custom_blocks', 'start_at', 'end_at', 'weight_type', 'embeds_scaling',
                 'style_boost', 'composition_boost'),
        outputs=(('embeds', 'IPA_EMBEDS'),),
        widget_types=(('weight', 'FLOAT'), ('blocks', 'COMBO'), ('custom_blocks', 'STRING'), ('start_at', 'FLOAT'),
                      ('end_at', 'FLOAT'), ('weight_type', 'COMBO'), ('embeds_scaling', 'COMBO'),
                      ('style_boost', 'FLOAT'), ('composition_boost', 'FLOAT')),
        defaults=(('weight', 1.0), ('blocks', 'all'), ('custom_blocks', ''), ('start_at', 0.0), ('end_at', 1.0),
                  ('weight_type', 'linear'), ('embeds_scaling', 'V only'), ('style_boost', 1.0),
                  ('composition_boost', 1.0))),
    'IPAApply': Spec(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPA_MODEL'), ('embeds', 'IPA_EMBEDS'), ('attn_mask', 'MASK')),
        widgets=(),
        outputs=(('MODEL', 'MODEL'),),
        widget_types=(),
        defaults=()),
    'IPAApplySimple': Spec(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPA_MODEL'), ('clip_vision', 'CLIP_VISION'), ('image', 'IMAGE')),
        widgets=('weight', 'start_at', 'end_at', 'weight_type', 'embeds_scaling'),
        outputs=(('MODEL', 'MODEL'),),
        widget_types=(('weight', 'FLOAT'), ('start_at', 'FLOAT'), ('end_at', 'FLOAT'), ('weight_type', 'COMBO'),
                      ('embeds_scaling', 'COMBO')),
        defaults=(('weight', 1.0), ('start_at', 0.0), ('end_at', 1.0), ('weight_type', 'linear'),
                  ('embeds_scaling', 'V only'))),
    'IPAApplyTiled': Spec(
        sockets=(('model', 'MODEL'), ('ipadapter', 'IPA_MODEL'), ('clip_vision', 'CLIP_VISION'), ('image', 'IMAGE')),
        widgets=('weight', 'placement', 'start_at', 'end_at', 'tile_size', 'weight_type', 'batch'),
        outputs=(('MODEL', 'MODEL'), ('tiles', 'IMAGE'), ('masks', 'MASK')),
        widget_types=(('weight', 'FLOAT'), ('placement', 'COMBO'), ('start_at', 'FLOAT'), ('end_at', 'FLOAT'),
                      ('tile_size', 'INT'), ('weight_type', 'COMBO'), ('batch', 'COMBO')),
        defaults=(('weight', 1.0), ('placement', 'where the tile lies'), ('start_at', 0.0), ('end_at', 1.0),
                  ('tile_size', 0), ('weight_type', 'linear'), ('batch', 'together'))),
    'IPACombineFeatures': Spec(
        sockets=(('features_1', 'CLIP_VISION_OUTPUT'), ('features_2', 'CLIP_VISION_OUTPUT'),
                 ('features_3', 'CLIP_VISION_OUTPUT'), ('features_4', 'CLIP_VISION_OUTPUT'),
                 ('features_5', 'CLIP_VISION_OUTPUT')),
        widgets=('method', 'weight_1', 'weight_2', 'weight_3', 'weight_4', 'weight_5'),
        outputs=(('image_features', 'CLIP_VISION_OUTPUT'),),
        widget_types=(('method', 'COMBO'), ('weight_1', 'FLOAT'), ('weight_2', 'FLOAT'), ('weight_3', 'FLOAT'),
                      ('weight_4', 'FLOAT'), ('weight_5', 'FLOAT')),
        defaults=(('method', 'average'), ('weight_1', 1.0), ('weight_2', 1.0), ('weight_3', 1.0), ('weight_4', 1.0),
                  ('weight_5', 1.0))),
    'IPANoiseNegative': Spec(
        sockets=(('image', 'IMAGE'),),
        widgets=('type', 'strength', 'blur', 'seed_offset'),
        outputs=(('image', 'IMAGE'),),
        widget_types=(('type', 'COMBO'), ('strength', 'FLOAT'), ('blur', 'INT'), ('seed_offset', 'INT')),
        defaults=(('type', 'fade'), ('strength', 1.0), ('blur', 0), ('seed_offset', 0))),
    'IPAPrepareReference': Spec(
        sockets=(('image', 'IMAGE'),),
        widgets=('interpolation', 'crop_position', 'sharpening'),
        outputs=(('image', 'IMAGE'),),
        widget_types=(('interpolation', 'COMBO'), ('crop_position', 'COMBO'), ('sharpening', 'FLOAT')),
        defaults=(('interpolation', 'bicubic'), ('crop_position', 'center'), ('sharpening', 0.0))),
    'IPAFrames': Spec(
        sockets=(('embeds', 'IPA_EMBEDS'), ('frame_weights', 'FLOAT')),
        widgets=('frames_per_image', 'transition_frames', 'transition'),
        outputs=(('embeds', 'IPA_EMBEDS'),),
        widget_types=(('frames_per_image', 'INT'), ('transition_frames', 'INT'), ('transition', 'COMBO')),
        defaults=(('frames_per_image', 1), ('transition_frames', 0), ('transition', 'linear'))),
    'IPAFrameWeights': Spec(
        sockets=(),
        widgets=('frames', 'curve', 'start_weight', 'end_weight', 'seed', CONTROL),
        outputs=(('frame_weights', 'FLOAT'),),
        widget_types=(('frames', 'INT'), ('curve', 'COMBO'), ('start_weight', 'FLOAT'), ('end_weight', 'FLOAT'),
                      ('seed', 'INT')),
        defaults=(('frames', 16), ('curve', 'linear'), ('start_weight', 1.0), ('end_weight', 0.0), ('seed', 0))),
    'IPAJoinFrameWeights': Spec(
        sockets=(('weights_1', 'FLOAT'), ('weights_2', 'FLOAT')),
        widgets=(),
        outputs=(('frame_weights', 'FLOAT'), ('count', 'INT'))),
    'IPAPromptSchedule': Spec(
        sockets=(('image', 'IMAGE'),),
        widgets=('prompt', 'frames', 'add_starting_frames', 'add_ending_frames'),
        outputs=(('prompt_schedule', 'STRING'),),
        widget_types=(('prompt', 'STRING'), ('frames', 'INT'), ('add_starting_frames', 'INT'),
                      ('add_ending_frames', 'INT')),
        defaults=(('prompt', ''), ('frames', 1), ('add_starting_frames', 0), ('add_ending_frames', 0))),
    'IPASchedule': Spec(
        sockets=(('embeds', 'IPA_EMBEDS'),),
        widgets=('curve', 'weight_end', 'keyframes'),
        outputs=(('embeds', 'IPA_EMBEDS'),),
        widget_types=(('curve', 'COMBO'), ('weight_end', 'FLOAT'), ('keyframes', 'STRING')),
        defaults=(('curve', 'linear'), ('weight_end', 0.0), ('keyframes', '0.0:1.0, 0.5:0.6, 1.0:0.2'))),
    'ConditioningSetMask': Spec(
        sockets=(('conditioning', 'CONDITIONING'), ('mask', 'MASK')),
        widgets=('strength', 'set_cond_area'),
        outputs=(('CONDITIONING', 'CONDITIONING'),),
        widget_types=(('strength', 'FLOAT'), ('set_cond_area', 'COMBO')),
        defaults=(('strength', 1.0),)),
    'PrimitiveInt': Spec(
        sockets=(),
        widgets=('value', CONTROL),
        outputs=(('INT', 'INT'),),
        widget_types=(('value', 'INT'),),
        defaults=()),
    'IPASaveFeatures': Spec(
        sockets=(('image_features', 'CLIP_VISION_OUTPUT'),),
        widgets=('filename_prefix',),
        outputs=(),
        widget_types=(('filename_prefix', 'STRING'),),
        defaults=(('filename_prefix', 'ipadapter/features'),)),
    'IPALoadFeatures': Spec(
        sockets=(),
        widgets=('features_file',),
        outputs=(('image_features', 'CLIP_VISION_OUTPUT'), ('negative_features', 'CLIP_VISION_OUTPUT')),
        widget_types=(('features_file', 'COMBO'),),
        defaults=()),
    'PrimitiveFloat': Spec(
        sockets=(),
        widgets=('value',),
        outputs=(('FLOAT', 'FLOAT'),),
        widget_types=(('value', 'FLOAT'),),
        defaults=()),
    'IPAFaceAnalysisLoader': Spec(
        sockets=(),
        widgets=('pack', 'provider', 'backend'),
        outputs=(('face_analysis', 'IPA_FACE_ANALYSIS'),),
        widget_types=(('pack', 'COMBO'), ('provider', 'COMBO'), ('backend', 'COMBO')),
        defaults=(('pack', 'buffalo_l'), ('provider', 'auto'), ('backend', 'onnxruntime'))),
    'IPAUnifiedLoaderFaceID': Spec(
        sockets=(('model', 'MODEL'),),
        widgets=('preset', 'provider'),
        outputs=(('ipadapter', 'IPA_MODEL'), ('clip_vision', 'CLIP_VISION'), ('face_analysis', 'IPA_FACE_ANALYSIS')),
        widget_types=(('preset', 'COMBO'), ('provider', 'COMBO')),
        defaults=(('preset', 'FACEID PLUS V2'), ('provider', 'auto'))),
    'IPAFaceAnalysis': Spec(
        sockets=(('face_analysis', 'IPA_FACE_ANALYSIS'), ('image', 'IMAGE')),
        widgets=('choose', 'index', 'threshold'),
        outputs=(('faces', 'IPA_FACES'), ('face_crops', 'IMAGE'), ('found', 'IMAGE')),
        widget_types=(('choose', 'COMBO'), ('index', 'INT'), ('threshold', 'FLOAT')),
        defaults=(('choose', 'largest'), ('index', 0), ('threshold', 0.5))),
    'IPAProjectFace': Spec(
        sockets=(('ipadapter', 'IPA_MODEL'), ('faces', 'IPA_FACES'), ('clip_vision', 'CLIP_VISION'),
                 ('negative_image', 'IMAGE')),
        widgets=('combine', 'faceid_version', 'weight_faceidv2', 'lora_strength', 'image_weights', 'weight_kolors'),
        outputs=(('embeds', 'IPA_EMBEDS'),),
        widget_types=(('combine', 'COMBO'), ('faceid_version', 'COMBO'), ('weight_faceidv2', 'FLOAT'),
                      ('lora_strength', 'FLOAT'), ('image_weights', 'STRING'), ('weight_kolors', 'FLOAT')),
        defaults=(('combine', 'concat'), ('faceid_version', 'auto'), ('weight_faceidv2', 1.0),
                  ('lora_strength', 1.0), ('image_weights', ''), ('weight_kolors', 1.0))),
}
