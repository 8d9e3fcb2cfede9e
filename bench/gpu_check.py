"""bench/gpu_check.sh's first step: what this machine is and whether everything the GPU checks need imports.

Prints torch, CUDA and the GPU; imports ComfyUI (found as everywhere: ``ip_adapter_core/host.py``), this
extension's nodes and every package the later steps use; checks their files exist. Exit 1, naming what is
missing and what to do, when something is; without ``--dry-run`` also when there is no CUDA GPU.
"""
from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
# what the steps import beyond ComfyUI's own: the tests (pytest, diffusers), training (accelerate)
PACKAGES = ("torch", "torchvision", "safetensors", "transformers", "einops", "aiohttp", "yaml", "PIL", "scipy",
            "torchsde", "av", "sqlalchemy", "alembic", "pydantic", "kornia", "spandrel", "diffusers", "accelerate",
            "pytest")
FILES = ("tests/test_gpu.py", "tests/test_host_runtime.py", "bench/run.py", "scripts/train_ipadapter.py")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="no GPU needed: check that everything is found")
    args = ap.parse_args(argv)
    missing = []
    if shutil.which("nvidia-smi"):
        print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                             capture_output=True, text=True).stdout.strip())
    for name in PACKAGES:
        try:
            mod = importlib.import_module(name)
            print(f"  {name} {getattr(mod, '__version__', '')}")
        except Exception as exc:  # noqa: BLE001 - any import failure is reported, the next one tried
            missing.append(f"package {name} ({type(exc).__name__}: {exc})")
    import torch

    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: "
          f"{torch.cuda.get_device_name(0) if cuda else 'none'}")
    if not cuda and not args.dry_run:
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    from support.package_alias import install

    install()
    from ipadapter_ext.ip_adapter_core import host

    root = host.add_to_sys_path(cpu=not cuda)
    if root is None:
        missing.append("ComfyUI (searched " + host.describe_search() + "); bench/gpu_prepare.sh packs one")
    else:
        print(f"ComfyUI: {root}")
        try:
            import comfy.sd  # noqa: F401
            from comfy_api.latest import io  # noqa: F401

            from ipadapter_ext.nodes import IPAdapterExtension  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            missing.append(f"ComfyUI or this extension does not import ({type(exc).__name__}: {exc})")
    missing += [f"file {f}" for f in FILES if not (REPO / f).is_file()]
    if missing:
        print("MISSING:\n  " + "\n  ".join(missing)
              + "\nOn a machine without PyPI: run bench/gpu_prepare.sh where pip works and carry .gpu/", flush=True)
        return 1
    print("gpu_check.py: everything needed is here" + (" (dry run)" if args.dry_run else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
