"""Save and load projected image prompts (safetensors; loading runs no code)."""
import os

import folder_paths
from comfy_api.latest import io

from ..ip_adapter_core.prompt.embeds_io import EXTENSION, load_prompt, save_prompt
from .files import input_fingerprint, output_path
from .types import CATEGORY, IPAEmbeds


class IPASaveEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPASaveEmbeds", display_name="IP-Adapter Save Embeds", category=CATEGORY,
            description=f"Writes the image tokens to output/ipadapter/*{EXTENSION} (safetensors). "
                        "Move a file to input/ to load it.",
            inputs=[IPAEmbeds.Input("embeds", tooltip="From IP-Adapter Project."),
                    io.String.Input("filename_prefix", default="ipadapter/embeds",
                                    tooltip="Path under the output folder.")],
            outputs=[], is_output_node=True)

    @classmethod
    def execute(cls, embeds, filename_prefix) -> io.NodeOutput:
        save_prompt(embeds, output_path(filename_prefix, EXTENSION))
        return io.NodeOutput()


class IPALoadEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = sorted(f for f in os.listdir(folder_paths.get_input_directory()) if f.endswith(EXTENSION)) \
            if os.path.isdir(folder_paths.get_input_directory()) else []
        return io.Schema(
            node_id="IPALoadEmbeds", display_name="IP-Adapter Load Embeds", category=CATEGORY,
            description=f"Reads image tokens saved by IP-Adapter Save Embeds (*{EXTENSION} in input/).",
            inputs=[io.Combo.Input("embeds_file", options=files, tooltip=f"A *{EXTENSION} file in the input folder.")],
            outputs=[IPAEmbeds.Output(display_name="embeds")])

    @classmethod
    def fingerprint_inputs(cls, embeds_file):
        return input_fingerprint(embeds_file)

    @classmethod
    def execute(cls, embeds_file) -> io.NodeOutput:
        return io.NodeOutput(load_prompt(folder_paths.get_annotated_filepath(embeds_file)))
