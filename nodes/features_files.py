"""Save and load CLIP features: ours as safetensors, ComfyUI_IPAdapter_plus's .ipadpt pickles read without
running code (tensors only, size-bounded)."""
import folder_paths
from comfy_api.latest import io

from ..ip_adapter_core.prompt.features_io import EXTENSION, THEIR_EXTENSION, list_files, load_features, save_features
from .files import input_fingerprint, output_path
from .types import CATEGORY


class IPASaveFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPASaveFeatures", display_name="IP-Adapter Save Features", category=CATEGORY,
            description=f"Writes CLIP features to output/ipadapter/*{EXTENSION} (safetensors), to project later "
                        "without the reference image or the encoder. Move a file to input/ to load it.",
            inputs=[io.ClipVisionOutput.Input("image_features",
                                              tooltip="From IP-Adapter Encode Image or ComfyUI's CLIP Vision Encode."),
                    io.String.Input("filename_prefix", default="ipadapter/features",
                                    tooltip="Path under the output folder.")],
            outputs=[], is_output_node=True)

    @classmethod
    def execute(cls, image_features, filename_prefix) -> io.NodeOutput:
        save_features(image_features, output_path(filename_prefix, EXTENSION))
        return io.NodeOutput()


class IPALoadFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPALoadFeatures", display_name="IP-Adapter Load Features", category=CATEGORY,
            description=f"Reads CLIP features saved by IP-Adapter Save Features (*{EXTENSION}) or by "
                        f"ComfyUI_IPAdapter_plus's Save Embeds (*{THEIR_EXTENSION}, read as tensors only, no code) "
                        "from input/.",
            inputs=[io.Combo.Input("features_file", options=list_files(folder_paths.get_input_directory()),
                                   tooltip=f"A *{EXTENSION} or *{THEIR_EXTENSION} file in the input folder or a "
                                           "folder inside it.")],
            outputs=[io.ClipVisionOutput.Output(display_name="image_features",
                                                tooltip="The saved features (float32), for IP-Adapter Project."),
                     io.ClipVisionOutput.Output(display_name="negative_features",
                                                tooltip="The saved negative (ComfyUI_IPAdapter_plus's first-generation "
                                                        "files), else nothing: Project then makes the default one.")])

    @classmethod
    def fingerprint_inputs(cls, features_file):
        return input_fingerprint(features_file)

    @classmethod
    def execute(cls, features_file) -> io.NodeOutput:
        # negative_features is None unless the file holds one (their first-generation files): ComfyUI passes None
        # down the wire, and Project treats it as unconnected (the reference's negative).
        return io.NodeOutput(*load_features(folder_paths.get_annotated_filepath(features_file)))
