"""The repository's scripts/ (the launcher, the headless runner, the workflow format, the trainer) as the tests
drive them: imported by file name, the way the scripts import each other, with scripts/ put on sys.path here
and nowhere else."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def script(name: str):
    """scripts/<name>.py as a module."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)
