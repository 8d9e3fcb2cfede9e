"""What the save and load nodes share: where a saved file goes, and the cache key of a file picked from input/."""
import os

import folder_paths

from ..ip_adapter_core.prompt.embeds_io import fingerprint


def output_path(filename_prefix: str, extension: str) -> str:
    """output/<prefix>_00001_<extension>, numbered after the files already there (as ComfyUI's Save Image)."""
    folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                   folder_paths.get_output_directory())
    return os.path.join(folder, f"{name}_{counter:05}_{extension}")


def input_fingerprint(name: str) -> str:
    """ComfyUI reuses a node's cached output while this value stays the same: the content's hash, so a file
    overwritten under the same name is read again."""
    path = folder_paths.get_annotated_filepath(name)
    return fingerprint(path) if os.path.isfile(path) else f"missing: {path}"
